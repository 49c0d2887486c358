"""The Open Inference Protocol (KServe V2) beside lstm.v1: its gRPC service and its HTTP/JSON
binding, both speaking to the core through one protocol-neutral translation (``model.py``)."""
