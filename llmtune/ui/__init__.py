"""`llmtune ui`: a web page over a workspace folder to write recipes, start and follow runs, compare them, try a
finished run's predictions and share them (`server.py` starts it; `app.py` is the page; `form.py`, `jobs.py` and
`actions.py` do the work). Needs the `ui` extra: `pip install 'llmtune[ui]'` (Gradio).
"""
