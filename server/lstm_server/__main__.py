"""Run the server with ``python -m lstm_server``."""

from lstm_server.launch import main

main()
