"""``clara-mock``: the mock platform's command line.

One module per command, and the parser that ties them together:

- :mod:`~server_mock._cli.main`: the parser, global flags and dispatch (``main``);
- :mod:`~server_mock._cli.serve`: ``serve``, the platform until interrupted;
- :mod:`~server_mock._cli.run`: ``run``, one pipeline on an embedded platform, with
  :mod:`~server_mock._cli.preflight` (what it refuses before starting),
  :mod:`~server_mock._cli.progress` (the live table, the lines, ``run.log``),
  :mod:`~server_mock._cli.operator_logs` (the operators' logs kept and streamed) and
  :mod:`~server_mock._cli.signals` (SIGINT and SIGTERM as one exception);
- :mod:`~server_mock._cli.verbs` (``create``, ``start``, ``describe``, ...: the real ``clara``
  CLI's verbs) and :mod:`~server_mock._cli.admin` (``jobs ...``, ``pipelines ...``): clients of
  a running platform, sharing :mod:`~server_mock._cli.connection`;
- :mod:`~server_mock._cli.runner_args` and :mod:`~server_mock._cli.tls_args`: the flags that
  configure the operator launcher and TLS.

The Platform API client these commands share is :mod:`server_mock._client` (the pytest plugin
uses it too).
"""

from server_mock._cli.main import main

__all__ = ["main"]
