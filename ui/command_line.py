"""Where the app listens, checked when it starts: a bad --host or --port is refused in one line before anything loads."""

import argparse
import errno
import ipaddress
import re
import socket
from typing import NoReturn


class OneLineErrorsParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints its whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def port_problem(port: int) -> str | None:
    return None if 1 <= port <= 65535 else f"--port {port} is not a port number: choose one from 1 to 65535 (default 7860)"


def host_problem(host: str) -> str | None:
    """Why `host` cannot be listened on, as far as its name tells (None when it may be): not an address, nor a known name."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    advice = "use 127.0.0.1 (this machine only), 0.0.0.0 (every network of this machine) or one of its addresses"
    if re.fullmatch(r"[\d.]+", host):  # numbers, yet no IPv4 address: never looked up as a name
        return f"--host {host} is not an IP address: {advice}"
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return f"--host {host} is neither an IP address nor a name this machine knows: {advice}"
    return None


def listen_problem(host: str, port: int) -> str | None:
    """Why the app could not listen on `host`:`port` (None when it can): tried by binding a socket there, then letting go."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
            probe.bind(address)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            return f"port {port} is in use on {host} (another LoRA Lab?): stop it, or choose another --port"
        if error.errno == errno.EACCES:
            return f"port {port} needs administrator rights here: choose one from 1024 to 65535, e.g. --port 7860"
        return f"cannot listen on {host}:{port} ({error.strerror or error}): give --host one of this machine's addresses, e.g. 127.0.0.1 or 0.0.0.0"
    return None
