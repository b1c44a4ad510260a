"""bootstrap's pure parts: the fact parser (recorded from a bootstrapped
Debian 12 sandbox host), platform detection, inventory validation, the swap
planner, unit and nginx templates, and the package/layout command builders."""
from pathlib import Path

import pytest

from tasks.config import platforms as plat
from tasks.cli.bootstrap import PlanError, layout_cmd, memberships, plan_host
from tasks.resources.packages import wanted_packages
from tasks.config.app import AppSpec, app_spec
from tasks.core.errors import ConfigError
from tasks.facts.script import Stat, facts_cmd, FactsRequest, parse_facts
from tasks.config.hosts import Host
from tasks.resources.nginx import nginx_size, render_site, render_upstream
from tasks.resources.swap import plan_swap, swap_script
from tasks.resources.tls import TlsSpec, cert_state, certbot_cmd
from tasks.resources.units import render_app_unit

FIX = Path(__file__).parent / "fixtures"
DEBIAN = (FIX / "facts-debian12.txt").read_text()
AL2023 = (FIX / "facts-al2023.txt").read_text()


class Inv:
    """The part of Inventory that app_spec/plan_host use, over a plain dict."""

    path = "inv.yaml"

    def __init__(self, data):
        self.data = data

    def get(self, key, default=None):
        cur = self.data
        for p in key.split("."):
            if not isinstance(cur, dict) or cur.get(p) is None:
                return default
            cur = cur[p]
        return cur

    def file_of(self, key):
        return "inv.yaml"

    def error(self, key, problem):
        return ConfigError("inv.yaml", key, problem)


class Ctx:
    def __init__(self, inv):
        self.inv = inv


def spec_for(**app):
    base = {"name": "benchapp", "kind": "node", "port": 4000, "start": "node dist/server.js"}
    base.update(app)
    return app_spec(Inv({"app": base, "packages": ["nginx", "git", "jq", "unzip"], "swap": {"size": "64M"}}))


# -- facts -------------------------------------------------------------------------

def test_parse_recorded_debian_facts():
    f = parse_facts(DEBIAN)
    assert f.complete and f.virt == "systemd-nspawn" and f.in_container and not f.ipv6
    assert plat.detect(f.os_release).label == "Debian GNU/Linux 12 (bookworm) (apt)"
    assert f.packages["nodejs"] == "18.20.4+dfsg-1~deb12u3" and "docker.io" not in f.packages
    assert f.commands == {"certbot": "/usr/bin/certbot", "node": "/usr/bin/node", "python3": "/usr/bin/python3"}
    assert f.links == {"/etc/nginx/sites-enabled/benchapp.conf": "/etc/nginx/sites-available/benchapp.conf"}
    assert f.stats["/swapfile"] == Stat("regular file", "root", "root", "600", 64 * 1024 * 1024)
    assert f.stats["/etc/benchapp/benchapp.env"].matches("root", "benchapp", "0600")
    assert f.sha256["/etc/benchapp/benchapp.env"].startswith("93d5efb3")
    assert f.unit_enabled("benchapp@4001.service") and not f.unit_active("benchapp@4001.service")
    assert f.unit_active("nginx.service") and not f.unit_loaded("certbot-renew.timer")
    assert f.passwd["benchapp"][5] == "/home/benchapp" and f.member_of["benchapp"] == ["benchapp"]
    assert f.swaps == [] and f.meminfo["SwapTotal"] == 0 and f.swap_fs == "overlayfs"
    assert f.fstab == [(2, "/swapfile none swap sw 0 0")]
    c = f.certs["h1.sandbox.test"]
    assert c.exists and c.valid_for_min and c.names == ["h1.sandbox.test"] and "Pebble" in c.issuer
    assert f.renewal["h1.sandbox.test"] == {"server": "https://10.231.0.1:14000/dir", "authenticator": "nginx"}


def test_incomplete_facts_are_detected():
    assert not parse_facts(DEBIAN.split("@@ end")[0]).complete


def test_facts_script_is_one_read_only_command():
    req = FactsRequest(apt_packages=["nginx"], dnf_packages=["nginx"], paths=["/opt/a"], hash_paths=["/etc/a.env"],
                       units=["nginx.service"], users=["a"], groups=["a", "docker"], swap_path="/swapfile",
                       certs=[("a.example", "/etc/letsencrypt/live/a.example/fullchain.pem", 86400)])
    body = facts_cmd(req).parts[2]
    assert not body.startswith("set -e")   # a missing file must not end the script
    for verb in ("rm ", "mv ", "chmod", "chown", "install ", "apt-get", "dnf ", "systemctl restart", "tee "):
        assert verb not in body
    assert "for f in /etc/passwd /etc/group; do" in body and 'case "$l" in a:*|docker:*)' in body
    assert "QUOTING_STYLE=literal stat -c" in body and "sha256sum -- /etc/a.env" in body


def test_users_and_memberships_from_passwd_and_group():
    f = parse_facts("@@ users\n/etc/passwd:web:x:998:997::/home/web:/usr/sbin/nologin\n"
                    "/etc/group:web:x:997:\n/etc/group:docker:x:990:ops,web\n@@ end\n")
    assert f.member_of == {"web": ["web", "docker"]}


# -- platforms and inventory validation ----------------------------------------------------

@pytest.mark.parametrize("text,pid,family,node,compose", [
    ('ID=debian\nVERSION_ID="12"', "debian", "apt", 18, "v1"),
    ('ID=ubuntu\nVERSION_ID="22.04"', "ubuntu", "apt", 12, "plugin"),
    ('ID=ubuntu\nVERSION_ID="24.04"', "ubuntu", "apt", 18, "plugin"),
    ('ID="amzn"\nVERSION_ID="2023"', "amzn", "dnf", 18, "none"),
])
def test_detect(text, pid, family, node, compose):
    p = plat.detect(text)
    assert (p.id, p.family, p.node_major, p.compose) == (pid, family, node, compose)


@pytest.mark.parametrize("text", ['ID=debian\nVERSION_ID="11"', 'ID=ubuntu\nVERSION_ID="20.04"', "ID=arch", ""])
def test_unsupported(text):
    with pytest.raises(plat.UnsupportedPlatform, match="unsupported platform: .*supported: Debian 12"):
        plat.detect(text)


def test_package_names_per_platform():
    deb, u22, al = (plat.detect(t) for t in ('ID=debian\nVERSION_ID=12', 'ID=ubuntu\nVERSION_ID=22.04',
                                            'ID=amzn\nVERSION_ID=2023'))
    assert plat.docker_packages(deb, True) == ["docker.io", "docker-compose"]
    assert plat.docker_packages(u22, True) == ["docker.io", "docker-compose-v2"]
    assert plat.python_packages(deb, None) == ["python3", "python3-venv"]
    assert plat.python_packages(al, "3.11") == ["python3.11"]
    assert plat.certbot_packages(deb, "webroot") == ["certbot"]
    assert plat.certbot_packages(al, "nginx") == ["python3", "augeas-libs"]
    assert plat.node_major("1:20.11.1-1.amzn2023") == 20 and plat.node_major("v18.19.0") == 18


def test_apt_install_is_one_call_with_a_conditional_update():
    cmd = plat.install_cmd(plat.detect("ID=debian\nVERSION_ID=12"), ["nginx", "jq"])
    body = cmd.parts[2]
    assert ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 "
            "--no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "
            "nginx jq") in body
    assert "apt-get update -q -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3" in body  # a busy dpkg lock is waited for
    assert "-mmin -1440" in body and body.count("apt-get update") == 2   # stale lists, and retry once
    # a dpkg run a killed bootstrap interrupted is finished before apt is asked (it refuses otherwise)
    first = body.splitlines()[1]
    assert first == ('if [ -n "$(ls -A /var/lib/dpkg/updates 2>/dev/null)" ]; then DEBIAN_FRONTEND=noninteractive '
                     'dpkg --force-confdef --force-confold --configure -a; fi')


def test_wanted_packages_are_deduplicated_in_order():
    deb = plat.detect("ID=debian\nVERSION_ID=12")
    tls = TlsSpec(["a.example"], "ops@a.example", "nginx", None, None, 30)
    assert wanted_packages(spec_for(start="npm start"), deb, tls) == ["curl", "openssl", "ca-certificates", "nginx", "nodejs", "npm",
                                                     "certbot", "python3-certbot-nginx", "git", "jq", "unzip"]


@pytest.mark.parametrize("app,key,problem", [
    ({"kind": "python", "start": None}, "app.start", "required for kind python"),
    ({"port": None}, "app.port", "required for kind node"),
])
def test_app_spec_errors(app, key, problem):
    with pytest.raises(ConfigError) as e:
        spec_for(**app)
    assert f"inv.yaml: {key}: {problem}" in str(e.value)


def test_app_spec_defaults():
    s = spec_for(start=None)
    assert (s.user, s.group, s.root, s.config_dir, s.env_path) == (
        "benchapp", "benchapp", "/opt/benchapp", "/etc/benchapp", "/etc/benchapp/benchapp.env")
    assert s.start == "npm start" and s.strategy == "blue_green" and list(s.ports) == [4001, 4002]
    assert s.unit_port == 4001 and (s.env_owner, s.env_group, s.env_mode) == ("root", "benchapp", "0600")


def test_sandbox_registry_is_insecure():
    s = app_spec(Inv({"app": {"name": "d", "kind": "docker", "port": 8080},
                      "docker": {"registry": "10.231.0.1:5000"}, "sandbox": {"registry": "10.231.0.1:5000"}}))
    assert list(s.insecure_registries) == ["10.231.0.1:5000"]


def test_node_version_not_packaged_fails_before_changes():
    f = parse_facts(DEBIAN.replace("nodejs\tii \t18.20.4+dfsg-1~deb12u3\n", ""))
    with pytest.raises(PlanError) as e:
        plan_host(Ctx(Inv({})), spec_for(node_version="20"), f)
    assert str(e.value) == ("inv.yaml: app.node_version is 20 but Debian GNU/Linux 12 (bookworm) packages "
                            "Node.js 18; set app.node_version: 18 (or remove it to use the distro's), or install "
                            "Node.js 20 on the image first")
    assert plan_host(Ctx(Inv({})), spec_for(node_version="18"), f).id == "debian"


def test_unsupported_platform_is_a_plan_error():
    with pytest.raises(PlanError, match="unsupported platform: CentOS"):
        plan_host(Ctx(Inv({})), spec_for(), parse_facts('@@ os\nID=centos\nPRETTY_NAME="CentOS 7"\n@@ end\n'))


# -- layout ---------------------------------------------------------------------------------

def test_layout_nothing_to_do_on_bootstrapped_host():
    f = parse_facts(DEBIAN)
    assert layout_cmd(spec_for(), f, memberships(spec_for(), Host("h1", "a", "root", 22, "s"))) == ([], [])


def test_layout_fixes_only_what_differs():
    f = parse_facts(DEBIAN.replace("directory\troot\tbenchapp\t750\t4096\t/etc/benchapp",
                                   "directory\troot\troot\t755\t4096\t/etc/benchapp"))
    lines, what = layout_cmd(spec_for(), f, {"benchapp": ["benchapp"]})
    assert lines == ["mkdir -p -- /etc/benchapp && chown -- root:benchapp /etc/benchapp && chmod -- 0750 /etc/benchapp"]
    assert what == ["fix /etc/benchapp -> root:benchapp 0750"]


def test_docker_kind_puts_app_and_deploy_user_in_docker_group():
    s = app_spec(Inv({"app": {"name": "d", "kind": "docker", "port": 8080}}))
    assert memberships(s, Host("w", "a", "ec2-user", 22, "s")) == {"d": ["d", "docker"], "ec2-user": ["docker"]}
    f = parse_facts("@@ users\n/etc/passwd:d:x:998:997::/home/d:/usr/sbin/nologin\n/etc/group:d:x:997:\n"
                    "/etc/group:docker:x:990:\n@@ end\n")
    lines, _ = layout_cmd(s, f, {"d": ["d", "docker"]})
    assert "id -nG d | tr ' ' '\\n' | grep -qx docker || usermod -aG docker d" in lines


# -- swap -------------------------------------------------------------------------------------

def swap_facts(**kw):
    f = parse_facts("@@ end\n")
    f.stats = kw.get("stats", {})
    f.swaps = kw.get("swaps", [])
    f.fstab = kw.get("fstab", [])
    f.virt = kw.get("virt", "")
    f.swap_fs = "ext4"
    return f


G = 1024 ** 3


def test_swap_fresh_host():
    p = plan_swap(swap_facts(), "2G", "/swapfile")
    assert (p.make_file, p.fix_fstab, p.swapon, p.skip) == (True, True, True, "")
    body = swap_script(p).parts[2]
    assert ('fallocate -l 2147483648 -- "$new" 2>/dev/null || '
            'dd if=/dev/zero of="$new" bs=1M count=2048 status=none') in body
    order = [body.index(x) for x in ('chmod 600 -- "$new"', 'mkswap -- "$new"', 'mv -f -- "$new" "$real"',
                                     "awk -v p=\"$f\" '$1 != p' /etc/fstab", "printf '%s\\n' '/swapfile none swap sw 0 0'",
                                     'swapon -- "$f"')]
    assert order == sorted(order)


def test_swap_in_place_is_ok():
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "600", 2 * G)},
                   swaps=[{"name": "/swapfile", "type": "file", "size": 2 * G - 4096}],
                   fstab=[(3, "/swapfile none swap sw 0 0")])
    assert not plan_swap(f, "2G", "/swapfile").changes


def test_swap_duplicate_fstab_lines_become_one():
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "600", 2 * G)},
                   swaps=[{"name": "/swapfile", "type": "file", "size": 2 * G}],
                   fstab=[(3, "/swapfile none swap sw 0 0"), (4, "/swapfile  none  swap  sw  0  0"),
                          (5, "#/swapfile none swap sw 0 0"), (6, "/swapfile2 none swap sw 0 0")])
    p = plan_swap(f, "2G", "/swapfile")
    assert p.fix_fstab and not p.make_file and not p.swapon and p.reasons == ["fstab: 2 lines for /swapfile -> 1"]


def test_swap_resize_swaps_off_first():
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "600", 1 * G)},
                   swaps=[{"name": "/swapfile", "type": "file", "size": G}], fstab=[(3, "/swapfile none swap sw 0 0")])
    p = plan_swap(f, "2G", "/swapfile")
    assert p.make_file and p.swapoff_first and p.swapon and not p.fix_fstab
    assert p.reasons == ["resize /swapfile 1G -> 2G"]
    body = swap_script(p).parts[2]
    assert body.index('swapoff -- "$f"') < body.index("fallocate")


def test_swap_skipped_when_enough_elsewhere():
    p = plan_swap(swap_facts(swaps=[{"name": "/dev/xvdb", "type": "partition", "size": 4 * G}]), "2G", "/swapfile")
    assert p.skip == "enough swap already: 4G active on /dev/xvdb"


def test_swap_on_overlay_in_container_is_not_retried():
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "600", 2 * G)},
                   fstab=[(3, "/swapfile none swap sw 0 0")], virt="systemd-nspawn")
    f.swap_fs = "overlayfs"
    p = plan_swap(f, "2G", "/swapfile")
    assert not p.changes
    assert p.container_skip == ("swapon not permitted in this container (systemd-nspawn, swap file on overlayfs); "
                                "/swapfile (2G, 0600) and its fstab line are in place")


def test_swap_in_container_on_a_plain_fs_is_retried():
    # e.g. the sandbox after a swapoff: swap works there, so bootstrap turns it back on
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "600", 2 * G)},
                   fstab=[(3, "/swapfile none swap sw 0 0")], virt="systemd-nspawn")
    p = plan_swap(f, "2G", "/swapfile")
    assert p.swapon and p.container_skip == ""


def test_swap_wrong_mode_is_fixed():
    f = swap_facts(stats={"/swapfile": Stat("regular file", "root", "root", "644", 2 * G)},
                   swaps=[{"name": "/swapfile", "type": "file", "size": 2 * G}], fstab=[(3, "/swapfile none swap sw 0 0")])
    p = plan_swap(f, "2G", "/swapfile")
    assert p.chmod and not p.make_file and 'chown root:root -- "$f" && chmod 600 -- "$f"' in swap_script(p).parts[2]


# -- units --------------------------------------------------------------------------------------

def test_restart_unit():
    u = render_app_unit(name="api", user="api", group="api", root="/opt/api", env_file="/etc/api/api.env",
                        start="node server.js --greeting 100%", strategy="restart", port=3000, restart_sec=3,
                        environment={"NODE_ENV": "production", "QUOTE": 'say "hi"'}, hardening=False)
    assert u.name == "api.service" and u.verify_as == ""
    lines = u.content.splitlines()
    for want in ["User=api", "Group=api", "WorkingDirectory=/opt/api/current", "EnvironmentFile=/etc/api/api.env",
                 'Environment="NODE_ENV=production"', 'Environment="QUOTE=say \\"hi\\""',
                 "ExecStart=/usr/bin/env PORT=3000 node server.js --greeting 100%%", "Restart=always", "RestartSec=3",
                 "WantedBy=multi-user.target", "After=network-online.target", "Wants=network-online.target"]:
        assert want in lines, want
    assert "NoNewPrivileges=yes" not in lines


def test_blue_green_template_unit():
    u = render_app_unit(name="api", user="api", group="api", root="/opt/api", env_file="/etc/api/api.env",
                        start="npm start", strategy="blue_green", port=3001, extra={"LimitNOFILE": "65536"})
    assert u.name == "api@.service" and u.verify_as == "api@3001.service"
    lines = u.content.splitlines()
    for want in ["WorkingDirectory=/opt/api/.fabship/slots/%i", "ExecStart=/usr/bin/env PORT=%i npm start",
                 "NoNewPrivileges=yes", "ProtectSystem=full", "PrivateTmp=yes", "LimitNOFILE=65536"]:
        assert want in lines, want
    assert "MemoryDenyWriteExecute=yes" not in lines   # would break node's JIT


# -- nginx ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given,nginx", [("10M", "10m"), ("1G", "1g"), ("512KiB", "512k"), ("1000", "1000"),
                                          ("2048M", "2g")])
def test_nginx_size(given, nginx):
    assert nginx_size(given) == nginx


def test_site_http_only_until_the_certificate_exists():
    text = render_site(app="api", server_names=["api.example"], client_max_body_size="20M", ipv6=True)
    assert "listen 80;" in text and "listen [::]:80;" in text and "listen 443" not in text
    for want in ["include /etc/nginx/fabship/api-upstream.conf;", "server_name api.example;",
                 "client_max_body_size 20m;", "location ^~ /.well-known/acme-challenge/ {",
                 "root /var/www/fabship-acme;", "proxy_pass http://api_backend;", "proxy_set_header Host $host;",
                 "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "proxy_set_header Upgrade $http_upgrade;",
                 "proxy_set_header Connection $fabship_api_connection;", "map $http_upgrade $fabship_api_connection {"]:
        assert want in text, want


def test_site_with_tls_redirects_http():
    text = render_site(app="my-app", server_names=["a.example", "b.example"], ipv6=False,
                       tls={"cert": "/etc/letsencrypt/live/a.example/fullchain.pem",
                            "key": "/etc/letsencrypt/live/a.example/privkey.pem"})
    http, https = text.split("listen 443 ssl;")
    assert "return 301 https://$host$request_uri;" in http and "acme-challenge" in http
    assert "proxy_pass" not in http and "proxy_pass http://my-app_backend;" in https
    assert "ssl_certificate /etc/letsencrypt/live/a.example/fullchain.pem;" in https
    assert "server_name a.example b.example;" in https and "[::]" not in text
    assert "$fabship_my_app_connection" in text


def test_site_default_server_static_and_no_websocket():
    text = render_site(app="s", server_names=[], proxy=False, static_root="/opt/s/current", websocket=False)
    assert "listen 80 default_server;" in text and "server_name _;" in text
    assert "root /opt/s/current;" in text and "try_files $uri $uri/ =404;" in text and "upstream" not in text


def test_upstream():
    assert render_upstream("api", [3001]).splitlines()[1:] == [
        "upstream api_backend {", "    server 127.0.0.1:3001;", "    keepalive 16;", "}"]


# -- tls ----------------------------------------------------------------------------------------------

def test_certbot_command_webroot_forced():
    spec = TlsSpec(["a.example", "www.a.example"], "ops@a.example", "webroot", None, "PEM", 30)
    assert certbot_cmd(spec, "/var/www/fabship-acme", force=True).render() == (
        "REQUESTS_CA_BUNDLE=/etc/fabship/acme-ca.pem certbot certonly --webroot -w /var/www/fabship-acme "
        "--cert-name a.example -d a.example -d www.a.example --non-interactive --agree-tos -m ops@a.example "
        "--no-eff-email --deploy-hook 'systemctl reload nginx' --force-renewal")


def test_cert_state():
    f = parse_facts(DEBIAN)
    pebble = "https://10.231.0.1:14000/dir"
    spec = TlsSpec(["h1.sandbox.test"], "o@x.y", "nginx", pebble, None, 30)
    assert cert_state(f, spec) == (True, "valid certificate for h1.sandbox.test until Nov 22 00:41:16 2031 GMT")
    assert cert_state(f, TlsSpec(["h1.sandbox.test", "www.h1.sandbox.test"], "o@x.y", "nginx", pebble, None, 30)) \
        == (False, "certificate lacks www.h1.sandbox.test")
    assert cert_state(f, TlsSpec(["h1.sandbox.test"], "o@x.y", "nginx", None, None, 30))[1].startswith(
        "certificate was issued by https://10.231.0.1:14000/dir")
    f.certs["h1.sandbox.test"].valid_for_min = False
    assert cert_state(f, spec)[1] == ("certificate expires Nov 22 00:41:16 2031 GMT (less than 30 days left)")


def test_linked_swap_path_is_judged_by_its_target(tmp_path):
    """The sandbox's /swapfile links into a plain directory (overlayfs cannot
    hold swap): facts follow the link, /proc/swaps names the target, and the
    new file is built beside the target so the link survives."""
    import subprocess

    from tasks.facts.script import FactsRequest, facts_cmd

    target_dir = tmp_path / "plain"
    target_dir.mkdir()
    target = target_dir / "swapfile"
    target.write_bytes(b"\0" * 8192)
    target.chmod(0o600)
    link = tmp_path / "swapfile"
    link.symlink_to(target)
    req = FactsRequest()
    req.paths.append(str(link))
    req.swap_path = str(link)
    out = subprocess.run(facts_cmd(req).parts, capture_output=True, text=True).stdout
    f = parse_facts(out)
    assert f.swap_real == str(target)
    st = f.stats[str(link)]
    assert st.is_file and st.size == 8192 and st.mode == "600"
    f.swaps = [{"name": str(target), "type": "file", "size": 8192 - 4096}]
    f.fstab = [(1, f"{link} none swap sw 0 0")]
    p = plan_swap(f, 8192, str(link))
    assert not p.make_file and not p.swapon and not p.fix_fstab and not p.chmod
    body = swap_script(plan_swap(swap_facts(), "2G", str(link))).parts[2]
    assert 'real=$(readlink -f -- "$f")' in body and 'mv -f -- "$new" "$real"' in body


def test_facts_users_section_is_greps_output_without_a_fork(tmp_path):
    """The users section prints FILE:ENTRY for each asked-for name (as `grep -H` did), from a
    builtin loop; a name is matched literally, never as a pattern."""
    import subprocess

    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\napp:x:999:997::/home/app:/usr/sbin/nologin\n"
                                     "apple:x:998:996::/home/apple:/usr/sbin/nologin\n")
    (tmp_path / "group").write_text("root:x:0:\ndocker:x:996:app\napp:x:997:\n")
    body = facts_cmd(FactsRequest(users=["app"], groups=["app", "docker", "a.p"])).parts[2]
    body = body.replace("/etc/passwd", str(tmp_path / "passwd")).replace("/etc/group", str(tmp_path / "group"))
    out = subprocess.run(["sh", "-c", body], capture_output=True, text=True, timeout=30).stdout
    users = out.split("@@ users\n", 1)[1].split("@@", 1)[0].splitlines()
    assert users == [f"{tmp_path}/passwd:app:x:999:997::/home/app:/usr/sbin/nologin",
                     f"{tmp_path}/group:docker:x:996:app", f"{tmp_path}/group:app:x:997:"]
    f = parse_facts(out.replace(str(tmp_path), "/etc"))
    assert f.member_of["app"] == ["docker", "app"]


@pytest.mark.parametrize("app,deploy,hooks,npm", [
    ({"start": "node dist/server.js"}, {}, {}, False),                       # built elsewhere, started with node
    ({}, {}, {}, True),                                                      # the default start: npm start
    ({"start": "node dist/server.js"}, {"build": ["npm ci", "npm run build"]}, {}, True),
    ({"start": "node server.js"}, {}, {"after_switch": [{"run": "npx prisma migrate deploy"}]}, True),
    ({"start": "/usr/bin/yarn start"}, {}, {}, True),
    ({"start": "node npmx.js"}, {}, {}, False),                               # a word containing npm is not npm
])
def test_npm_only_when_a_command_of_the_app_uses_it(app, deploy, hooks, npm):
    """Issue 17: on Debian npm is hundreds of packages; a node app that never runs it gets none."""
    base = {"name": "benchapp", "kind": "node", "port": 4000, **app}
    spec = app_spec(Inv({"app": base, "deploy": deploy, "hooks": hooks}))
    deb, al = plat.detect("ID=debian\nVERSION_ID=12"), plat.detect('ID=amzn\nVERSION_ID="2023"')
    assert spec.needs_npm is npm
    assert ("npm" in wanted_packages(spec, deb, None)) is npm
    assert ("nodejs20-npm" in wanted_packages(spec, al, None)) is npm and "nodejs" in wanted_packages(spec, deb, None)


@pytest.mark.parametrize("link,snapshot,want", [
    ("releases/20260101T000000Z-v1", b"A=1\n", "sha"),     # relative link, snapshot there: its sha256
    ("/ROOT/releases/20260101T000000Z-v1/", b"A=1\n", "sha"),  # absolute, trailing slash
    ("releases/20260101T000000Z-v1", None, None),         # no snapshot: unknown
    (None, None, None),                                    # nothing deployed
    ("releases/bad name;x", b"A=1\n", None),              # not a release id: never read
])
def test_the_fact_script_reads_the_env_the_serving_release_runs(tmp_path, link, snapshot, want):
    import hashlib
    import subprocess

    from tasks.facts.script import applied_env_sha, parse_sha

    root = tmp_path / "app"
    (root / ".fabship" / "env").mkdir(parents=True)
    if link:
        (root / "current").symlink_to(link.replace("/ROOT", str(root)))
    if snapshot is not None:
        rid = link.rstrip("/").rsplit("/", 1)[-1]
        (root / ".fabship" / "env" / f"{rid}.env").write_bytes(snapshot)
    out = subprocess.run(["sh", "-c", applied_env_sha(str(root / "current"), str(root / ".fabship" / "env"))],
                         capture_output=True, text=True).stdout
    expect = hashlib.sha256(snapshot).hexdigest() if want else None
    assert parse_sha(out.splitlines()) == expect


def test_bootstrap_applies_an_env_file_the_serving_release_does_not_run():
    from types import SimpleNamespace as NS

    from tasks.cli.bootstrap import EnvInput, env_unapplied
    from tasks.core.dotenv import sha256_hex

    env = EnvInput({"A": "1"}, "a.env", b"A=1\n")
    assert env_unapplied(NS(env_applied=sha256_hex(b"A=0\n")), env)      # killed before its restart
    assert not env_unapplied(NS(env_applied=sha256_hex(b"A=1\n")), env)  # runs it
    assert not env_unapplied(NS(env_applied=None), env)                  # unknown / nothing deployed
    assert not env_unapplied(NS(env_applied=sha256_hex(b"A=0\n")), EnvInput(None, "", b""))  # no source
