/*
 * fabship sample container server: one static binary, no libc runtime deps,
 * so images are a tiny rootfs tarball (no JVM, no Docker Hub base image).
 *
 *   /app/server service   Spring-Boot-like service   (default port 8080)
 *   /app/server api       compose stack api          (default port 8080)
 *   /app/server client    compose stack static page  (default port 3000)
 *   /app/server db        compose stack "database"   (default port 5432)
 *   /app/server check PATH [PORT]   GET 127.0.0.1:PORT PATH, exit 0 on 200 (healthchecks)
 *
 * Port: SERVER_PORT > PORT > mode default. Bind: HOST (default 0.0.0.0).
 * Never prints env values or secret file contents.
 * Built with `gcc -static` (glibc), so it must not use getaddrinfo (NSS needs
 * dlopen): DB_HOST is resolved by hand via /etc/hosts, then DNS over UDP.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag = 0;
static const char *mode = "service";
static char version[128] = "unknown";
static char root[512] = "";  /* APP_ROOT: prefix for /VERSION and /app/BROKEN (local tests) */

static void on_term(int sig) { (void)sig; stop_flag = 1; }

static const char *env_or(const char *k, const char *d) {
    const char *v = getenv(k);
    return (v && *v) ? v : d;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static void load_version(void) {
    const char *v = getenv("APP_VERSION");
    if (v && *v) { snprintf(version, sizeof version, "%s", v); return; }
    char path[600];
    snprintf(path, sizeof path, "%s/VERSION", root);
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(version, sizeof version, f)) version[strcspn(version, "\r\n")] = 0;
    fclose(f);
    /* Keep the JSON we emit valid whatever the file holds. */
    for (char *c = version; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = '_';
}

static int health_broken(void) {
    char path[600];
    const char *f = getenv("FAIL_HEALTH");
    if (f && strcmp(f, "1") == 0) return 1;
    snprintf(path, sizeof path, "%s/app/BROKEN", root);  /* image built with --broken */
    if (file_exists(path)) return 1;
    return file_exists("FAIL_HEALTH");  /* file in the working dir */
}

/* Count non-hidden entries (k8s-style ..data links are hidden). -1 if dir absent. */
static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* ---- name resolution without NSS ---- */
static int resolve_hosts(const char *name, struct in_addr *out) {
    FILE *f = fopen("/etc/hosts", "r");
    if (!f) return 0;
    char line[512];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *save, *ip = strtok_r(line, " \t\r\n", &save);
        if (!ip || ip[0] == '#') continue;
        struct in_addr a;
        if (inet_pton(AF_INET, ip, &a) != 1) continue;
        for (char *h; (h = strtok_r(NULL, " \t\r\n", &save));) {
            if (h[0] == '#') break;
            if (strcasecmp(h, name) == 0) { *out = a; found = 1; break; }
        }
    }
    fclose(f);
    return found;
}

static int dns_query(const char *server, const char *name, struct in_addr *out) {
    unsigned char q[512], r[1024];
    int n = 0;
    unsigned short id = (unsigned short)(getpid() ^ time(NULL));
    q[n++] = id >> 8; q[n++] = id & 0xff;
    q[n++] = 0x01; q[n++] = 0x00;  /* RD */
    q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0; q[n++] = 0;
    const char *p = name;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (len == 0 || len > 63 || n + len + 6 > sizeof q) return 0;
        q[n++] = (unsigned char)len;
        memcpy(q + n, p, len); n += len;
        p += len; if (*p == '.') p++;
    }
    q[n++] = 0; q[n++] = 0; q[n++] = 1; q[n++] = 0; q[n++] = 1;  /* A, IN */

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(53)};
    if (inet_pton(AF_INET, server, &sa.sin_addr) != 1) return 0;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return 0;
    struct timeval tv = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int ok = 0;
    if (sendto(s, q, n, 0, (struct sockaddr *)&sa, sizeof sa) == n) {
        ssize_t m = recv(s, r, sizeof r, 0);
        if (m > 12 && r[0] == q[0] && r[1] == q[1] && (r[3] & 0x0f) == 0) {
            int an = (r[6] << 8) | r[7], off = n;  /* answers follow our echoed question */
            for (int i = 0; i < an && off + 12 <= m; i++) {
                if ((r[off] & 0xc0) == 0xc0) off += 2;
                else { while (off < m && r[off]) off += r[off] + 1; off++; }
                if (off + 10 > m) break;
                int type = (r[off] << 8) | r[off + 1], rdlen = (r[off + 8] << 8) | r[off + 9];
                off += 10;
                if (type == 1 && rdlen == 4 && off + 4 <= m) { memcpy(out, r + off, 4); ok = 1; break; }
                off += rdlen;
            }
        }
    }
    close(s);
    return ok;
}

static int resolve(const char *name, struct in_addr *out) {
    if (inet_pton(AF_INET, name, out) == 1) return 1;
    if (strcmp(name, "localhost") == 0) { inet_pton(AF_INET, "127.0.0.1", out); return 1; }
    if (resolve_hosts(name, out)) return 1;
    FILE *f = fopen("/etc/resolv.conf", "r");
    if (!f) return 0;
    char line[256], ns[64];
    int ok = 0;
    while (!ok && fgets(line, sizeof line, f))
        if (sscanf(line, "nameserver %63s", ns) == 1) ok = dns_query(ns, name, out);
    fclose(f);
    return ok;
}

/* TCP connect with a timeout; returns fd or -1. */
static int tcp_connect(struct in_addr addr, int port, int timeout_ms) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = addr};
    fcntl(s, F_SETFL, O_NONBLOCK);
    if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
        if (errno != EINPROGRESS) { close(s); return -1; }
        struct pollfd pfd = {.fd = s, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&pfd, 1, timeout_ms) != 1 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            close(s);
            return -1;
        }
    }
    fcntl(s, F_SETFL, 0);
    return s;
}

static int db_up(void) {
    struct in_addr a;
    if (!resolve(env_or("DB_HOST", "db"), &a)) return 0;
    int s = tcp_connect(a, atoi(env_or("DB_PORT", "5432")), 1000);
    if (s < 0) return 0;
    close(s);
    return 1;
}

/* ---- HTTP ---- */
static void log_line(const char *method, const char *path, int status) {
    char ts[32];
    time_t t = time(NULL);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
    printf("%s %s %s %s %d\n", ts, mode, method, path, status);
    fflush(stdout);
}

static void respond(int fd, const char *method, const char *path, int status, const char *type, const char *fmt, ...) {
    char body[4096], head[512];
    va_list ap;
    va_start(ap, fmt);
    int blen = vsnprintf(body, sizeof body, fmt, ap);
    va_end(ap);
    if (blen < 0) blen = 0;
    if (blen >= (int)sizeof body) blen = sizeof body - 1;
    const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed"
                       : status == 503 ? "Service Unavailable" : "Bad Request";
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n",
                        status, reason, type, blen);
    if (write(fd, head, hlen) < 0) {}
    if (strcmp(method, "HEAD") != 0 && write(fd, body, blen) < 0) {}
    log_line(method, path, status);
}

#define JSON "application/json"

static void handle(int fd) {
    char req[8192];
    size_t n = 0;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    while (n < sizeof req - 1) {
        ssize_t m = read(fd, req + n, sizeof req - 1 - n);
        if (m <= 0) break;
        n += m;
        req[n] = 0;
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n")) break;
    }
    req[n] = 0;
    char method[16] = "", path[1024] = "";
    if (sscanf(req, "%15s %1023s", method, path) != 2) {
        if (strcmp(mode, "db") == 0 && n == 0) return;  /* bare TCP probe from api: fine */
        respond(fd, "-", "-", 400, JSON, "{\"error\":\"bad request\"}");
        return;
    }
    path[strcspn(path, "?#")] = 0;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        respond(fd, method, path, 405, JSON, "{\"error\":\"method not allowed\"}");
        return;
    }
    if (strcmp(path, "/version") == 0) {
        respond(fd, method, path, 200, "text/plain", "%s\n", version);
        return;
    }
    int broken = health_broken();
    if (strcmp(mode, "service") == 0) {
        if (strcmp(path, "/actuator/health") == 0) {
            if (broken) respond(fd, method, path, 503, JSON, "{\"status\":\"DOWN\"}");
            else respond(fd, method, path, 200, JSON, "{\"status\":\"UP\"}");
        } else if (strcmp(path, "/actuator/info") == 0) {
            int ns = count_files(env_or("SECRETS_DIR", "/run/secrets"));
            int nc = count_files(env_or("CERTS_DIR", "/certs"));
            respond(fd, method, path, 200, JSON,
                    "{\"app\":{\"name\":\"docker-service\",\"version\":\"%s\"},"
                    "\"secrets\":\"%s\",\"secretFiles\":%d,\"certs\":\"%s\",\"certFiles\":%d}",
                    version, ns > 0 ? "present" : "absent", ns < 0 ? 0 : ns,
                    nc > 0 ? "present" : "absent", nc < 0 ? 0 : nc);
        } else if (strcmp(path, "/") == 0) {
            respond(fd, method, path, 200, "text/plain", "fabship docker-service %s\n", version);
        } else {
            respond(fd, method, path, 404, JSON, "{\"status\":404,\"error\":\"Not Found\"}");
        }
    } else if (strcmp(mode, "api") == 0) {
        if (strcmp(path, "/api/v1/health") == 0 || strcmp(path, "/actuator/health") == 0) {
            int db = db_up();
            int up = db && !broken;
            respond(fd, method, path, up ? 200 : 503, JSON, "{\"status\":\"%s\",\"db\":\"%s\",\"version\":\"%s\"}",
                    up ? "UP" : "DOWN", db ? "UP" : "DOWN", version);
        } else if (strcmp(path, "/api/v1/version") == 0) {
            respond(fd, method, path, 200, JSON, "{\"version\":\"%s\"}", version);
        } else {
            respond(fd, method, path, 404, JSON, "{\"error\":\"not found\"}");
        }
    } else if (strcmp(mode, "client") == 0) {
        if (strcmp(path, "/health") == 0) {
            if (broken) respond(fd, method, path, 503, JSON, "{\"status\":\"DOWN\"}");
            else respond(fd, method, path, 200, JSON, "{\"status\":\"UP\"}");
        } else if (strcmp(path, "/") == 0 || strcmp(path, "/index.html") == 0) {
            respond(fd, method, path, 200, "text/html; charset=utf-8",
                    "<!doctype html><html><head><title>fabship client</title></head><body>"
                    "<h1>fabship compose client</h1><p>version: <span id=\"version\">%s</span></p></body></html>\n",
                    version);
        } else {
            respond(fd, method, path, 404, "text/plain", "not found\n");
        }
    } else { /* db */
        if (strcmp(path, "/health") == 0) respond(fd, method, path, 200, JSON, "{\"status\":\"UP\",\"role\":\"db\"}");
        else respond(fd, method, path, 200, "text/plain", "fabship stand-in database %s\n", version);
    }
}

static int check(const char *path, int port) {
    struct in_addr a;
    inet_pton(AF_INET, "127.0.0.1", &a);
    int s = tcp_connect(a, port, 2000);
    if (s < 0) { fprintf(stderr, "check: cannot connect to 127.0.0.1:%d\n", port); return 1; }
    struct timeval tv = {3, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[512];
    int n = snprintf(buf, sizeof buf, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    if (write(s, buf, n) != n) { close(s); return 1; }
    ssize_t m = read(s, buf, sizeof buf - 1);
    close(s);
    if (m <= 0) return 1;
    buf[m] = 0;
    int status = 0;
    sscanf(buf, "HTTP/%*s %d", &status);
    printf("check %s -> %d\n", path, status);
    return status == 200 ? 0 : 1;
}

static int default_port(void) {
    if (strcmp(mode, "client") == 0) return 3000;
    if (strcmp(mode, "db") == 0) return 5432;
    return 8080;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);  /* one log line per request, even when piped */
    if (argc > 1) mode = argv[1];
    snprintf(root, sizeof root, "%s", env_or("APP_ROOT", ""));
    const char *port_s = getenv("SERVER_PORT");
    if (!port_s || !*port_s) port_s = getenv("PORT");
    int port = (port_s && *port_s) ? atoi(port_s) : default_port();

    if (strcmp(mode, "check") == 0) {
        if (argc < 3) { fprintf(stderr, "usage: server check PATH [PORT]\n"); return 2; }
        return check(argv[2], argc > 3 ? atoi(argv[3]) : (port_s && *port_s ? port : 8080));
    }
    if (strcmp(mode, "service") && strcmp(mode, "api") && strcmp(mode, "client") && strcmp(mode, "db")) {
        fprintf(stderr, "usage: server service|api|client|db  or  server check PATH [PORT]\n");
        return 2;
    }
    const char *fs = getenv("FAIL_START");
    if ((fs && strcmp(fs, "1") == 0) || file_exists("FAIL_START")) {
        fprintf(stderr, "%s: startup failed: FAIL_START switch is on (fabship test switch)\n", mode);
        return 1;
    }
    if (port <= 0 || port > 65535) { fprintf(stderr, "%s: invalid port\n", mode); return 1; }
    load_version();

    struct sigaction sa = {.sa_handler = on_term};  /* no SA_RESTART: accept() must return EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGCHLD, SIG_IGN);  /* auto-reap per-connection children */
    signal(SIGPIPE, SIG_IGN);

    const char *host = env_or("HOST", "0.0.0.0");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { fprintf(stderr, "%s: HOST must be an IPv4 address\n", mode); return 1; }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 64) < 0) {
        fprintf(stderr, "%s: cannot listen on %s:%d: %s\n", mode, host, port, strerror(errno));
        return 1;
    }
    printf("fabship %s %s listening on %s:%d pid %d\n", mode, version, host, port, (int)getpid());

    while (!stop_flag) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) continue;  /* EINTR on SIGTERM: loop re-checks stop_flag */
        pid_t pid = fork();
        if (pid == 0) {
            close(ls);
            signal(SIGTERM, SIG_DFL);
            signal(SIGINT, SIG_DFL);
            handle(c);
            shutdown(c, SHUT_WR);
            close(c);
            _exit(0);
        }
        if (pid < 0) handle(c);  /* fork failed: serve inline rather than drop */
        close(c);
    }
    close(ls);
    printf("%s: SIGTERM received, shut down\n", mode);
    return 0;
}
