#!/usr/bin/env python3
"""Reads a regimage user-data file the way cloud-init does (PyYAML, YAML 1.1) and checks it.

  user_data_check.py json FILE [--fast]   print yaml.safe_load(FILE) as JSON
  user_data_check.py check FILE [--fast]  assert the structure regimage means to write;
                                          print a JSON summary
  user_data_check.py binary FILE OUT      decode the embedded /usr/local/bin/regimage
                                          (base64 + gunzip) into OUT
  user_data_check.py script FILE          print the runcmd script exactly as cloud-init
                                          writes it (cloudinit.util.shellify; run this with
                                          the python3 that has the cloudinit package)
  user_data_check.py write FILE ROOT      write every write_files item under ROOT with
                                          cloud-init's own write_files (same python3), owners
                                          recorded instead of set; print {path: {mode, owner}}

--fast uses libyaml's CSafeLoader (same YAML 1.1 resolver, for multi-megabyte documents);
the default is PyYAML's pure-Python SafeLoader, which is what cloud-init uses.
Exit status 1 with a message on stderr when a check fails.
"""

import base64
import gzip
import json
import re
import sys

import yaml


def load(path, fast):
    with open(path, "rb") as f:
        text = f.read()
    first_line = text.split(b"\n", 1)[0]
    if first_line != b"#cloud-config":
        fail(f"first line is {first_line!r}, not b'#cloud-config'")
    loader = yaml.CSafeLoader if fast else yaml.SafeLoader
    return yaml.load(text, Loader=loader)


def fail(msg):
    print(f"user_data_check: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def is_str_list(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check(doc):
    expect(isinstance(doc, dict), f"document is {type(doc).__name__}, not a mapping")
    expect(
        list(doc) == ["package_update", "packages", "users", "write_files", "bootcmd", "runcmd"],
        f"top-level keys are {list(doc)}",
    )
    expect(doc["package_update"] is True, "package_update is not the boolean true")
    expect(is_str_list(doc["packages"]) and doc["packages"], "packages is not a list of strings")

    users = doc["users"]
    expect(isinstance(users, list) and len(users) == 3, f"users: {users!r}")
    expect(users[0] == "default", f"users[0] is {users[0]!r}, not 'default'")
    for u in users[1:]:
        expect(isinstance(u, dict), f"user {u!r} is not a mapping")
        for key in ("name", "gecos", "shell", "homedir"):
            expect(isinstance(u.get(key), str), f"user {u!r}: {key} is not a string")
        for key in ("system", "no_create_home", "lock_passwd"):
            expect(u.get(key) is True, f"user {u['name']}: {key} is not the boolean true")
        expect(u["shell"] == "/usr/sbin/nologin", f"user {u['name']}: shell {u['shell']!r}")

    files = doc["write_files"]
    expect(isinstance(files, list) and files, "write_files is not a non-empty list")
    paths = []
    # The items with cloud-init's defaults filled in (what it writes).
    resolved = []
    for f in files:
        expect(isinstance(f, dict), f"write_files item {f!r} is not a mapping")
        allowed = {"path", "owner", "permissions", "encoding", "content", "defer"}
        expect(set(f) <= allowed, f"{f.get('path')}: unexpected keys {set(f) - allowed}")
        for key in ("path", "content"):
            expect(isinstance(f.get(key), str), f"{f.get('path')}: {key} is {f.get(key)!r}, not a string")
        # regimage leaves out cloud-init's defaults; what is written must be a string.
        for key in ("owner", "permissions"):
            expect(isinstance(f.get(key, ""), str), f"{f.get('path')}: {key} is {f.get(key)!r}, not a string")
        expect(f.get("owner") != "root:root", f"{f.get('path')}: the default owner is written")
        expect(f.get("permissions") != "0644", f"{f.get('path')}: the default permissions are written")
        f = {"owner": "root:root", "permissions": "0644", **f}
        path = f["path"]
        expect(path.startswith("/") and not path.startswith(("/tmp/", "/var/tmp/")), f"bad path {path}")
        expect(re.fullmatch(r"[0-7]{4}", f["permissions"]) is not None, f"{path}: permissions {f['permissions']!r}")
        expect(re.fullmatch(r"[a-z_][a-z0-9_.-]*:[a-z_][a-z0-9_.-]*", f["owner"]) is not None, f"{path}: owner {f['owner']!r}")
        expect(f.get("defer") is True, f"{path}: defer is {f.get('defer')!r}, not the boolean true")
        if "encoding" in f:
            expect(f["encoding"] == "gz+b64", f"{path}: encoding {f['encoding']!r}")
        paths.append(path)
        resolved.append(f)
    expect(len(paths) == len(set(paths)), "a path is written twice")

    # bootcmd runs at every boot: its one item (the lean package install) runs once per
    # instance through cloud-init-per.
    bootcmd = doc["bootcmd"]
    expect(isinstance(bootcmd, list) and len(bootcmd) == 1 and is_str_list(bootcmd[0]), f"bootcmd: {bootcmd!r}")
    expect(bootcmd[0][:2] == ["cloud-init-per", "instance"], f"bootcmd item {bootcmd[0][:3]!r} is not once per instance")

    runcmd = doc["runcmd"]
    expect(isinstance(runcmd, list) and runcmd, "runcmd is not a non-empty list")
    for item in runcmd:
        expect(isinstance(item, str) or is_str_list(item), f"runcmd item {item!r} is not a string or a list of strings")
    expect(runcmd[0] == "set -eu", f"runcmd[0] is {runcmd[0]!r}")
    # First boot enabled and queued before anything that can fail (issue 10).
    expect(runcmd[3] == ["systemctl", "start", "--no-block", "regimage-firstboot.service"], f"runcmd[3] is {runcmd[3]!r}")

    return {
        "packages": doc["packages"],
        "users": [u if isinstance(u, str) else u["name"] for u in users],
        "files": {f["path"]: {"owner": f["owner"], "permissions": f["permissions"], "encoding": f.get("encoding", "text")} for f in resolved},
        "runcmd": runcmd,
    }


def main(argv):
    if len(argv) < 3:
        fail(__doc__)
    cmd, path = argv[1], argv[2]
    fast = "--fast" in argv[3:]
    doc = load(path, fast)
    if cmd == "json":
        json.dump(doc, sys.stdout)
    elif cmd == "check":
        json.dump(check(doc), sys.stdout)
    elif cmd == "binary":
        items = [f for f in doc["write_files"] if f["path"] == "/usr/local/bin/regimage"]
        expect(len(items) == 1, "no embedded /usr/local/bin/regimage")
        expect(items[0].get("encoding") == "gz+b64", "the binary is not gz+b64")
        with open(argv[3], "wb") as out:
            out.write(gzip.decompress(base64.b64decode(items[0]["content"])))
    elif cmd == "script":
        from cloudinit.util import shellify

        sys.stdout.write(shellify(doc["runcmd"]))
    elif cmd == "write":
        import os

        from cloudinit import util
        from cloudinit.config import cc_write_files

        root = argv[3]
        owners = {}

        def record(path, user, group):
            owners[path[len(root):]] = f"{user}:{group}"

        # The owners are the machine's users; here they are only recorded.
        util.chownbyname = record
        # A mode left out must not come from the umask.
        os.umask(0o077)
        items = [{**{k: v for k, v in f.items() if k != "defer"}, "path": root + f["path"]} for f in doc["write_files"]]
        cc_write_files.write_files("write_files", items, "root:root")
        json.dump(
            {f["path"]: {"mode": f"{os.stat(root + f['path']).st_mode & 0o7777:04o}", "owner": owners.get(f["path"])} for f in doc["write_files"]},
            sys.stdout,
        )
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
