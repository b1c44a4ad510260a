"""pyinfra 3 equivalent of fabship's bootstrap work for the peer benchmark:
packages, user, dirs, env file, systemd unit, nginx site."""
import os
from pathlib import Path

from pyinfra.operations import apt, files, server, systemd

HERE = Path(__file__).parent
APP = "benchapp"

# BENCH_PACKAGES: bench/cold_bootstrap.py adds nodejs, which fabship's node app installs too
PACKAGES = os.environ.get("BENCH_PACKAGES", "nginx git jq unzip").split()
apt.packages(name="packages", packages=PACKAGES)
server.group(name="group", group=APP, system=True)
# ensure_home=False: pyinfra would chown the home to the user, and the next operation sets
# /opt/APP back to root: both changed on every run (Ansible's create_home: false, as here)
server.user(name="user", user=APP, group=APP, system=True, home=f"/opt/{APP}", shell="/usr/sbin/nologin",
            ensure_home=False)
for d, owner, mode in [(f"/opt/{APP}", "root", "755"), (f"/opt/{APP}/releases", APP, "755"),
                       (f"/opt/{APP}/shared", APP, "755"), (f"/etc/{APP}", "root", "750")]:
    files.directory(name=f"dir {d}", path=d, user=owner, group=APP, mode=mode)
files.put(name="env file", src=str(HERE / "bench.env"), dest=f"/etc/{APP}/{APP}.env", user="root", group=APP,
          mode="600")
unit = files.template(name="unit", src=str(HERE / "benchapp.service.j2"), dest=f"/etc/systemd/system/{APP}.service",
                      app=APP)
# running=None: enable only, as fabship's bootstrap and the Ansible play (pyinfra's default,
# running=True, would start the unit of an app with no release yet, at every run)
systemd.service(name="enable unit", service=f"{APP}.service", running=None, enabled=True,
                daemon_reload=unit.changed)
site = files.template(name="nginx site", src=str(HERE / "benchapp.nginx.j2"),
                      dest=f"/etc/nginx/sites-enabled/{APP}.conf", app=APP)
server.shell(name="nginx reload", commands=["nginx -t && systemctl reload nginx"], _if=site.did_change)
