"""lstm-serving server: hosts one Keras LSTM behind the lstm.v1.LstmService gRPC API."""

__all__: list[str] = []
