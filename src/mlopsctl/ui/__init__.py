"""The dashboard (``mlopsctl ui``): server-rendered pages and a JSON API over the use cases.

- :mod:`~mlopsctl.ui.app`: ``create_app(settings)``, error pages, security headers, the page/API pairing
- :mod:`~mlopsctl.ui.auth`: the token, the login cookie, CSRF tokens for forms
- :mod:`~mlopsctl.ui.runs`, :mod:`~mlopsctl.ui.models`, :mod:`~mlopsctl.ui.monitor`,
  :mod:`~mlopsctl.ui.activity`: one blueprint per area; every page ``/x`` has its data at ``/api/x``
- :mod:`~mlopsctl.ui.charts`: inline SVG charts (no JavaScript needed to read them)
- :mod:`~mlopsctl.ui.server`: gunicorn or Flask's development server

It reads through :mod:`mlopsctl.services` and writes only through the same use cases as the CLI
(``promote`` and ``rollback``, so the gate applies); it never imports scikit-learn, skl2onnx or joblib.
"""
