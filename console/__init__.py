"""The Streamlit console: app.py is the entry point, client.py the only code that talks to the server."""
