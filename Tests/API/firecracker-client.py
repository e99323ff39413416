#!/usr/bin/env python3
"""A third-party Firecracker client configuring and starting svmm serve:
PyPI's firecracker-python, its Api wrapper (requests over
requests-unixsocket), unmodified. Its package __init__ looks for
Firecracker's binary and makes directories, so the package is entered
without it: the Api module and its exceptions are loaded from where pip put
them.

  firecracker-client.py SOCKET KERNEL INITRD BOOT_ARGS

Prints CLIENT-VERSION, CLIENT-STARTED and CLIENT-INFO lines, or
CLIENT-ERROR with the APIError's text (exit 1).
"""
import importlib.util
import sys
import types

spec = importlib.util.find_spec("firecracker")
package = types.ModuleType("firecracker")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["firecracker"] = package

from firecracker.api import Api  # noqa: E402
from firecracker.exceptions import APIError  # noqa: E402


def main(socket, kernel, initrd, boot_args):
    api = Api(socket)
    try:
        print("CLIENT-VERSION", api.version.get().json()["firecracker_version"])
        api.boot.put(kernel_image_path=kernel, initrd_path=initrd, boot_args=boot_args)
        api.machine_config.put(vcpu_count=1, mem_size_mib=128)
        try:
            api.machine_config.put(vcpu_count=64, mem_size_mib=128)
            print("CLIENT-ERROR a bad machine configuration was taken")
            return 1
        except APIError as e:
            print("CLIENT-REFUSED", e)
        api.actions.put(action_type="InstanceStart")
        print("CLIENT-STARTED")
        print("CLIENT-INFO", api.describe.get().json()["state"])
    except APIError as e:
        print("CLIENT-ERROR", e)
        return 1
    finally:
        api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
