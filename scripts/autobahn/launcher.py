# -*- coding: utf-8 -*-
"""Start the Autobahn|Testsuite fuzzing server bound to loopback only (Python 2.7).

    $NHLINK_AUTOBAHN_HOME/py27/bin/python scripts/autobahn/launcher.py SPEC.json [wstest args...]

runs ``wstest -m fuzzingserver -s SPEC.json --webport 0 [wstest args...]`` with Twisted's
``reactor.listenTCP`` / ``reactor.listenSSL`` wrapped so that every listening socket is bound to
127.0.0.1, whatever interface the suite asks for (it asks for all interfaces by default). The
embedded web server (port 8080 by default) is disabled unless ``--webport``/``-u`` is given.

Python 2 program: ruff skips this file (pyproject's extend-exclude); keep it 2/3-syntax neutral.
"""

from __future__ import print_function

import sys

LOOPBACK = "127.0.0.1"


def _install_loopback_only(reactor):
    orig_tcp = reactor.listenTCP
    orig_ssl = reactor.listenSSL

    def _note(kind, port, interface):
        if interface != LOOPBACK:
            shown = "all interfaces" if not interface else repr(interface)
            print("[launcher] %s(%s): %s replaced by %s" % (kind, port, shown, LOOPBACK))
        sys.stdout.flush()

    def listenTCP(port, factory, backlog=50, interface=""):
        _note("listenTCP", port, interface)
        p = orig_tcp(port, factory, backlog, LOOPBACK)
        print("[launcher] listening on %s:%d (tcp)" % (LOOPBACK, p.getHost().port))
        sys.stdout.flush()
        return p

    def listenSSL(port, factory, contextFactory, backlog=50, interface=""):
        _note("listenSSL", port, interface)
        p = orig_ssl(port, factory, contextFactory, backlog, LOOPBACK)
        print("[launcher] listening on %s:%d (tls)" % (LOOPBACK, p.getHost().port))
        sys.stdout.flush()
        return p

    reactor.listenTCP = listenTCP
    reactor.listenSSL = listenSSL


def main(argv):
    if len(argv) < 2 or argv[1].startswith("-"):
        print("usage: launcher.py SPEC.json [extra wstest args]", file=sys.stderr)
        return 2
    spec, extra = argv[1], argv[2:]

    # wstest installs its reactor (epoll on Linux) when imported; do that first, then wrap it.
    import autobahntestsuite.choosereactor  # noqa: F401  (side effect: reactor.install())
    from twisted.internet import reactor

    _install_loopback_only(reactor)

    from autobahntestsuite import wstest

    args = ["wstest", "-m", "fuzzingserver", "-s", spec]
    if not any(a in ("-u", "--webport") or a.startswith("--webport=") for a in extra):
        args += ["--webport", "0"]
    sys.argv = args + extra
    print("[launcher] %s" % " ".join(sys.argv))
    sys.stdout.flush()
    wstest.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
