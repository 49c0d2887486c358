"""The gRPC edge: servicers, proto⇄domain converters, and the error table. Kept thin."""
