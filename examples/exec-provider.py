#!/usr/bin/env python3
"""A worked example of a shadowcopy exec provider: a snapshot store in a directory.

Configure it in /etc/shadowcopy/config.toml:

    [providers.dirstore]
    command = "/usr/share/shadowcopy/examples/exec-provider.py"

    [sets.mail]
    provider = "exec:dirstore"
    [[sets.mail.writers]]
    kind = "sqlite"
    path = "/srv/mail/index.db"

shadowcopy runs `COMMAND OPERATION` with one JSON request on stdin and reads one JSON
answer from stdout; exit status 0 means done, anything else fails the step and stderr
says why. A real storage array or cloud volume would call its snapshot API where this
copies files. The store directory is SHADOWCOPY_EXAMPLE_STORE (default below).
SHADOWCOPY_EXAMPLE_FAIL=OPERATION makes that operation fail, to try the error paths.
"""
import json
import os
import shutil
import sys

STORE = os.environ.get("SHADOWCOPY_EXAMPLE_STORE", "/var/tmp/shadowcopy-example-store")


def in_copy(location, original):
    return os.path.join(location, original.lstrip("/"))


def files_of(path):
    """Every regular file a component names (a file, or a directory walked). Symlinks
    are not regular files: a copy of the file they point to would restore as a file."""
    if os.path.isdir(path) and not os.path.islink(path):
        for root, _dirs, names in os.walk(path):
            for n in names:
                p = os.path.join(root, n)
                if os.path.isfile(p) and not os.path.islink(p):
                    yield p
    elif os.path.isfile(path) and not os.path.islink(path):
        yield path


def check(req):
    # A real provider would check that the paths are on its volumes.
    return {"ok": True}


def location(req):
    # Named before anything is written, so shadowcopy can record it (and delete it if the
    # commit fails halfway). Never reuse a name.
    return {"location": os.path.join(STORE, f"{req['set']}-{req['copy_id']}-{os.getpid()}")}


def commit(req):
    # Runs while the applications are frozen: keep it short (an array snapshot is).
    loc = req["location"]
    os.makedirs(loc, exist_ok=req.get("continues", False))
    files = []
    for c in req["components"]:
        if not os.path.exists(c["path"]):
            if c["required"]:
                raise SystemExit(f"required component {c['path']} does not exist")
            continue
        for f in files_of(c["path"]):
            dest = in_copy(loc, f)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(f, dest)
            st = os.stat(dest)
            files.append({"path": f, "size": st.st_size, "mode": st.st_mode & 0o7777,
                          "mtime_ns": st.st_mtime_ns})
    return {"files": files}


def persist(req):
    for root, _dirs, names in os.walk(req["location"]):
        for n in names:
            fd = os.open(os.path.join(root, n), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    return {}


def delete(req):
    shutil.rmtree(req["location"], ignore_errors=True)  # a missing copy is success
    return {}


def expose(req):
    return {"files": [{"original": p, "path": in_copy(req["location"], p)} for p in req["paths"]]}


def restore(req):
    shutil.copy2(in_copy(req["location"], req["original"]), req["dest"])
    return {}


OPERATIONS = {"check": check, "location": location, "commit": commit, "persist": persist,
              "delete": delete, "expose": expose, "restore": restore}

if __name__ == "__main__":
    operation = sys.argv[1] if len(sys.argv) > 1 else ""
    if operation not in OPERATIONS:
        sys.exit(f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}")
    if os.environ.get("SHADOWCOPY_EXAMPLE_FAIL") == operation:
        sys.exit(f"{operation} failed on purpose (SHADOWCOPY_EXAMPLE_FAIL)")
    request = json.load(sys.stdin)
    json.dump(OPERATIONS[operation](request), sys.stdout)
