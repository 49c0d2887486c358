"""What the service does: run sequences, step sessions, schedule work for the runtime.

Plain dataclasses and numpy arrays; nothing here imports gRPC or TensorFlow.
"""
