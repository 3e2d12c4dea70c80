"""The service without Ray: app settings, the stage table, and the HTTP API of both contracts."""
