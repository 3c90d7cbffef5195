"""Stand-in for the get-pip.py that ansible-test downloads to bootstrap pip in its venvs.

ansible-test fetches get-pip.py from ci-files.testing.ansible.com, which this lab and
its CI cannot reach. ansible-test runs the script with pip's install arguments; this
does the same with the pip bundled in CPython (ensurepip), then installs what was asked
from the package index pip is configured for. `make sanity` puts it in ansible-test's cache.
"""

import ensurepip
import os
import subprocess
import sys

configured = os.environ.get("PIP_CONFIG_FILE")
ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null for its own offline install; the real
# install must see the machine's pip configuration (index, certificates) again.
env = dict(os.environ)
env.pop("PIP_CONFIG_FILE", None)
if configured is not None:
    env["PIP_CONFIG_FILE"] = configured
arguments = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *arguments], env=env))
