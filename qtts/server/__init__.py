"""The qtts speech server (``qtts serve``): OpenAI-compatible ``/v1/audio/speech``, a text-in WebSocket,
metrics and a voice library. Needs the ``server`` extra (``pip install 'qtts[server]'``); import
``qtts.server.app.create_app`` to embed it."""
