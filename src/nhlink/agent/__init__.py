"""The device agent: ``nhlink run`` and the commands around it (docs/agent.md).

A thin layer over the library, driven by a TOML file: :mod:`.config` reads and validates it,
:mod:`.runner` runs one :class:`~nhlink.NervesHubLink` per ``[[device]]``, :mod:`.control` is
the local control socket, :mod:`.notify` systemd's notify protocol, :mod:`.lock` the
machine-wide update lock, :mod:`.windows` maintenance windows, :mod:`.install` local installs.
"""
