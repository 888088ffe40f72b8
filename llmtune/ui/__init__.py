"""`llmtune ui`: a web page to write recipes, start and follow runs, compare them and try their predictions.

Over a workspace folder; finished runs can be shared too (`server.py` starts it; `app.py` is the page; `form.py`,
`jobs.py` and `actions.py` do the work). Needs the `ui` extra: `pip install 'llmtune[ui]'` (Gradio).
"""
