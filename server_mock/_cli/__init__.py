"""``clara-mock``: the mock platform's command line.

One module per command, and the parser that ties them together:

- :mod:`~server_mock._cli.main`: the parser, global flags and dispatch (``main``);
- :mod:`~server_mock._cli.serve`: ``serve``, the platform until interrupted;
- :mod:`~server_mock._cli.run`: ``run``, one pipeline on an embedded platform;
- :mod:`~server_mock._cli.admin`: ``jobs ...`` and ``pipelines ...``, clients of a running one;
- :mod:`~server_mock._cli.runner_args` and :mod:`~server_mock._cli.tls_args`: the flags that
  configure the operator launcher and TLS.

The Platform API client these commands share is :mod:`server_mock._client` (the pytest plugin
uses it too).
"""

from server_mock._cli.main import main

__all__ = ["main"]
