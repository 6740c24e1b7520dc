"""One asyncio server on one port for HTTP/1.1 and WebSocket."""
