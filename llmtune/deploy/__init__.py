"""From a saved run to use: serving it over HTTP, exporting it to ONNX, merging an adapter, the hub.

serve.py is the server (serve_http.py its requests and guards, serve_batcher.py its batching, serve_openai.py
and generate.py the OpenAI routes); export.py, merge.py and hub.py the rest."""
