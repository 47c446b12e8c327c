"""``ansible_ssh_common_args`` / ``ansible_ssh_extra_args`` / ``ansible_ssh_args``: ssh command-line
arguments, read as OpenSSH reads them, for the one thing edgenas takes from them, the jump hosts.

Ansible hands these strings to ``ssh`` split like a shell would (``shlex``), so they are split the same
way, and then read with ssh's own option grammar: single-letter flags may be bundled (``-qC``), an
option's argument may be glued to it (``-Jbastion``, ``-oProxyJump=bastion``) or follow it, and an
``-o`` option is ``Key=Value``, ``Key Value`` or ``Key = Value`` with a case-insensitive key.  As in
ssh, the first value obtained for ``ProxyJump`` wins.

What edgenas does with each option (never silently dropped):

* ``-J`` / ``ProxyJump``: the jump hosts.
* Options about how a connection behaves, which edgenas manages itself (connection sharing,
  keep-alives, compression, verbosity, agent and X11 forwarding, authentication preferences): ignored,
  since they change neither where edgenas connects nor as whom.
* Options that would weaken host-key checking (``StrictHostKeyChecking=no``, ``UserKnownHostsFile``):
  not followed; a note says host keys are still checked.
* Anything else (``ProxyCommand``, ``Port``, ``User``, ``IdentityFile``, forwardings, a config file,
  an unknown option): an error naming the option, with what to write instead.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

# ssh(1)'s getopt string: letters followed by ':' take an argument.
_SSH_GETOPT = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
_FLAGS = {c for i, c in enumerate(_SSH_GETOPT) if c != ":" and
          (i + 1 == len(_SSH_GETOPT) or _SSH_GETOPT[i + 1] != ":")}
_WITH_ARG = {c for i, c in enumerate(_SSH_GETOPT) if c != ":" and
             i + 1 < len(_SSH_GETOPT) and _SSH_GETOPT[i + 1] == ":"}

# Flags that change nothing about where or as whom edgenas connects.
_IGNORED_FLAGS = set("46AaCgKkMnqsTtvXxYy")
# Flags with an argument edgenas can leave aside for the same reason (-E log file, -e escape char,
# -S control path, -c ciphers / -m MACs: paramiko negotiates its own).
_IGNORED_WITH_ARG = set("EeSc" "m")
_FLAG_ADVICE = {
    "p": "set ansible_port instead",
    "l": "set ansible_user instead",
    "i": "set ansible_ssh_private_key_file instead",
    "F": "give the file to `edgenas device import --ssh-config FILE` instead",
    "W": "a stdio forward is what a jump host does: use -J / ProxyJump",
    "L": "edgenas opens no port forwardings", "R": "edgenas opens no port forwardings",
    "D": "edgenas opens no port forwardings", "w": "edgenas opens no tunnel devices",
    "N": "edgenas runs commands", "f": "edgenas runs commands in the foreground",
    "b": "edgenas does not pick a local address", "B": "edgenas does not pick a local interface",
    "I": "PKCS#11 keys are not supported; load the key into ssh-agent",
    "G": "edgenas connects, it does not print a configuration", "V": "edgenas connects",
    "O": "edgenas does not control a master connection", "Q": "edgenas connects",
    "o": "",
}

# -o options that change neither the destination nor the identity (lower case).
_IGNORED_OPTIONS = {
    "addkeystoagent", "batchmode", "challengeresponseauthentication", "checkhostip", "ciphers",
    "compression", "connectionattempts", "connecttimeout", "controlmaster", "controlpath",
    "controlpersist", "escapechar", "exitonforwardfailure", "forwardagent", "forwardx11",
    "forwardx11timeout", "forwardx11trusted", "gssapiauthentication", "gssapidelegatecredentials",
    "hashknownhosts", "identitiesonly", "ipqos", "kbdinteractiveauthentication", "kexalgorithms",
    "loglevel", "macs", "numberofpasswordprompts", "passwordauthentication",
    "preferredauthentications", "pubkeyauthentication", "requesttty", "sendenv",
    "serveraliveinterval", "serveralivecountmax", "tcpkeepalive", "updatehostkeys", "visualhostkey",
    "hostkeyalgorithms", "pubkeyacceptedkeytypes", "pubkeyacceptedalgorithms",
}
# -o options that would loosen host-key checking: not followed, with a note.
_HOST_KEY_OPTIONS = {"stricthostkeychecking", "userknownhostsfile", "globalknownhostsfile"}
_OPTION_ADVICE = {
    "port": "set ansible_port instead",
    "user": "set ansible_user instead",
    "hostname": "set ansible_host instead",
    "identityfile": "set ansible_ssh_private_key_file instead",
    "certificatefile": "load the certificate with its key into ssh-agent",
    "localforward": "edgenas opens no port forwardings",
    "remoteforward": "edgenas opens no port forwardings",
    "dynamicforward": "edgenas opens no port forwardings",
    "include": "give the file to `edgenas device import --ssh-config FILE` instead",
    "proxyusefdpass": "edgenas runs no ProxyCommand",
}


@dataclass
class SSHArgs:
    """What a string of ssh arguments says that edgenas uses or reports."""

    jump: str | None = None  # the ProxyJump / -J value, unresolved ("none" stays "none")
    proxy_command: str | None = None  # a ProxyCommand (refused by the caller with a hint)
    notes: list[str] = field(default_factory=list)  # options not followed, for a warning


def _option(text: str) -> tuple[str, str]:
    """An ``-o`` argument as (lower-case key, value): ``Key=Value``, ``Key Value``, ``Key = Value``."""
    text = text.strip()
    i = 0
    while i < len(text) and not (text[i].isspace() or text[i] == "="):
        i += 1
    key, rest = text[:i], text[i:].lstrip()
    if rest.startswith("="):
        rest = rest[1:].lstrip()
    if not key:
        raise ValueError(f"-o {text!r}: no option name")
    if len(rest) >= 2 and rest[0] == rest[-1] and rest[0] in "\"'":
        rest = rest[1:-1]
    return key.lower(), rest


def parse_ssh_args(text: str) -> SSHArgs:
    """Read a string of ssh arguments (see the module's docstring); ValueError names what is not
    supported and what to write instead."""
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot split {text!r} as a shell would: {exc}") from None
    out = SSHArgs()
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-":
            raise ValueError(
                f"{word!r} is not an ssh option (a host or a command has no place here)")
        if word == "--":
            raise ValueError("'--' ends ssh's options: a host or a command has no place here")
        j = 1
        while j < len(word):
            letter = word[j]
            j += 1
            if letter in _WITH_ARG:
                arg = word[j:]
                if not arg:
                    if i >= len(argv):
                        raise ValueError(f"-{letter} needs an argument")
                    arg = argv[i]
                    i += 1
                _flag_with_arg(out, letter, arg)
                break
            if letter not in _FLAGS:
                raise ValueError(f"-{letter} is not an ssh option")
            if letter not in _IGNORED_FLAGS:
                raise ValueError(f"-{letter} is not supported by edgenas: {_FLAG_ADVICE.get(letter, '')}"
                                 .rstrip(": "))
    return out


def _flag_with_arg(out: SSHArgs, letter: str, arg: str) -> None:
    if letter == "J":
        if out.jump is None:
            out.jump = arg.strip()
        return
    if letter == "o":
        key, value = _option(arg)
        _dash_o(out, key, value, arg)
        return
    if letter in _IGNORED_WITH_ARG:
        return
    raise ValueError(f"-{letter} {arg} is not supported by edgenas: {_FLAG_ADVICE.get(letter, '')}"
                     .rstrip(": "))


def _dash_o(out: SSHArgs, key: str, value: str, raw: str) -> None:
    if key == "proxyjump":
        if out.jump is None and out.proxy_command is None:
            out.jump = value.strip()
        return
    if key == "proxycommand":
        if value.strip().lower() == "none":
            if out.jump is None:
                out.jump = "none"
            return
        if out.jump is None and out.proxy_command is None:
            out.proxy_command = value
        return
    if key in _IGNORED_OPTIONS:
        return
    if key in _HOST_KEY_OPTIONS:
        out.notes.append(f"-o {raw} is not followed: edgenas always checks host keys (pinned, "
                         "known_hosts or a CA); trust new keys once with --accept-new-host-key")
        return
    advice = _OPTION_ADVICE.get(key)
    if advice:
        raise ValueError(f"-o {raw} is not supported by edgenas: {advice}")
    raise ValueError(f"-o {raw}: edgenas does not support the ssh option {key!r} (it reads ProxyJump "
                     "and leaves connection tuning aside); remove it, or set edgenas_skip on hosts "
                     "that need it")
