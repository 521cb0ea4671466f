"""The operator console: `beanmail web` (pages, /metrics, /healthz), a WSGI app also mountable
inside a web application (``worker.web.app.make_app``). ``tally`` is the workers' side of its
figures and imports nothing of the web part."""
