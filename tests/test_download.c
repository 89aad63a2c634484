/* test_download.c - gguf/download.sh against a local HTTP server.
 *
 * Each test builds a fixture in a fresh temp directory:
 *   srv/antirez/deepseek-v4-gguf/resolve/main/  small fake model files (KBs)
 *                                              under their real names
 *   repo/gguf/download.sh   a copy of the script, so the ds4flash.gguf link
 *                           it makes lands in the temp dir, not in the repo
 *   manifest                the sizes and sha256 of the fake files, handed
 *                           over as DS4CL_DOWNLOAD_MANIFEST
 *   bin/curl                a shim that logs curl's argv, then runs curl
 *   work/  home/            the script's working directory and $HOME
 * and serves srv/ from a thread in this process: an HTTP/1.0 server on
 * 127.0.0.1 with a kernel-chosen port that understands "Range: bytes=N-"
 * (python's http.server does not, and resuming is the point), records the
 * Range and Authorization headers of each request, and can cut a response
 * short (a dropped connection) or answer with an injected status (503, 401).  The script runs through
 * fork/execve with an explicit argv and environment, so hostile arguments
 * reach it byte for byte and no shell sits in between; each run is bounded
 * (its process group is killed after RUN_TIMEOUT_S) and the server thread is
 * always stopped and joined, whatever the test's outcome.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test.h"

#define RUN_TIMEOUT_S 60
#define N_MODELS 5
#define REPO_PATH "antirez/deepseek-v4-gguf/resolve/main"

/* ---- the HTTP server --------------------------------------------------- */

typedef struct {
    int listen_fd;
    int stop_pipe[2];
    int port;
    pthread_t thread;
    int running;
    char root[PATH_MAX];
    pthread_mutex_t mu; /* guards everything below */
    int n_requests;
    long long last_range; /* -1: no Range header */
    char last_auth[512];  /* value of the last Authorization header, "" if none */
    long long drop_after; /* >= 0: cut the next body after this many bytes */
    int fail_status;      /* answer the next fail_count requests with this */
    int fail_count;
} dl_server;

static int send_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void send_status(int fd, const char *status, const char *extra) {
    char hdr[512];
    int n = snprintf(hdr, sizeof(hdr), "HTTP/1.0 %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n",
                     status, extra);
    if (n > 0 && (size_t)n < sizeof(hdr)) send_all(fd, hdr, (size_t)n);
}

/* Copies the value of header `name` (case-insensitive) from the request
 * head into out; empty when absent. */
static void header_value(const char *head, const char *name, char *out, size_t cap) {
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, name, nl) != 0 || line[nl] != ':') continue;
        const char *v = line + nl + 1;
        while (*v == ' ') v++;
        const char *end = strstr(v, "\r\n");
        size_t len = end ? (size_t)(end - v) : strlen(v);
        if (len >= cap) len = cap - 1;
        memcpy(out, v, len);
        out[len] = '\0';
        return;
    }
}

static void serve_body(int fd, int file, long long start, long long size, long long drop_after) {
    long long end = size;
    if (drop_after >= 0 && start + drop_after < end) end = start + drop_after;
    char buf[8192];
    for (long long off = start; off < end;) {
        size_t want = (size_t)(end - off < (long long)sizeof(buf) ? end - off : (long long)sizeof(buf));
        ssize_t r = pread(file, buf, want, (off_t)off);
        if (r <= 0 || send_all(fd, buf, (size_t)r) != 0) return;
        off += r;
    }
}

static void serve_one(dl_server *s, int fd) {
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char req[16384];
    size_t n = 0;
    req[0] = '\0';
    while (!strstr(req, "\r\n\r\n")) {
        if (n == sizeof(req) - 1) return;
        ssize_t r = recv(fd, req + n, sizeof(req) - 1 - n, 0);
        if (r <= 0) return;
        n += (size_t)r;
        req[n] = '\0';
    }
    char method[8], path[1024], range[128], auth[512];
    if (sscanf(req, "%7s %1023s", method, path) != 2) {
        send_status(fd, "400 Bad Request", "");
        return;
    }
    header_value(req, "Range", range, sizeof(range));
    header_value(req, "Authorization", auth, sizeof(auth));
    long long start = -1;
    if (range[0]) {
        char *end = NULL;
        if (strncmp(range, "bytes=", 6) == 0) start = strtoll(range + 6, &end, 10);
        if (!end || *end != '-' || end[1] != '\0' || start < 0) {
            send_status(fd, "400 Bad Request", "");
            return;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->n_requests++;
    s->last_range = start;
    snprintf(s->last_auth, sizeof(s->last_auth), "%s", auth);
    long long drop_after = s->drop_after;
    s->drop_after = -1;
    int fail = 0;
    if (s->fail_count > 0) {
        s->fail_count--;
        fail = s->fail_status;
    }
    pthread_mutex_unlock(&s->mu);

    if (fail) {
        char status[64];
        snprintf(status, sizeof(status), "%d Injected Failure", fail);
        send_status(fd, status, "");
        return;
    }
    if (strcmp(method, "GET") != 0) {
        send_status(fd, "405 Method Not Allowed", "");
        return;
    }
    char full[PATH_MAX + 1024];
    if (path[0] != '/' || strstr(path, "..") || strchr(path, '%') || strchr(path, '?')) {
        send_status(fd, "404 Not Found", "");
        return;
    }
    snprintf(full, sizeof(full), "%s%s", s->root, path);
    int file = open(full, O_RDONLY);
    struct stat st;
    if (file < 0 || fstat(file, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (file >= 0) close(file);
        send_status(fd, "404 Not Found", "");
        return;
    }
    long long size = (long long)st.st_size;
    char hdr[512];
    int hn;
    if (start >= size) {
        char cr[96];
        snprintf(cr, sizeof(cr), "Content-Range: bytes */%lld\r\n", size);
        send_status(fd, "416 Range Not Satisfiable", cr);
        close(file);
        return;
    }
    if (start >= 0) {
        hn = snprintf(hdr, sizeof(hdr),
                      "HTTP/1.0 206 Partial Content\r\nContent-Length: %lld\r\n"
                      "Content-Range: bytes %lld-%lld/%lld\r\nConnection: close\r\n\r\n",
                      size - start, start, size - 1, size);
    } else {
        start = 0;
        hn = snprintf(hdr, sizeof(hdr), "HTTP/1.0 200 OK\r\nContent-Length: %lld\r\nConnection: close\r\n\r\n",
                      size);
    }
    if (hn > 0 && (size_t)hn < sizeof(hdr) && send_all(fd, hdr, (size_t)hn) == 0)
        serve_body(fd, file, start, size, drop_after);
    close(file);
}

static void *server_main(void *arg) {
    dl_server *s = arg;
    for (;;) {
        struct pollfd p[2] = {{s->listen_fd, POLLIN, 0}, {s->stop_pipe[0], POLLIN, 0}};
        int r = poll(p, 2, 1000);
        if (r < 0 && errno != EINTR) break;
        if (r <= 0) continue;
        if (p[1].revents) break;
        if (p[0].revents & POLLIN) {
            int fd = accept(s->listen_fd, NULL, NULL);
            if (fd < 0) continue;
            serve_one(s, fd);
            shutdown(fd, SHUT_RDWR);
            close(fd);
        }
    }
    return NULL;
}

static int server_start(dl_server *s, const char *root) {
    memset(s, 0, sizeof(*s));
    s->listen_fd = s->stop_pipe[0] = s->stop_pipe[1] = -1;
    s->last_range = -1;
    s->drop_after = -1;
    snprintf(s->root, sizeof(s->root), "%s", root);
    if (pthread_mutex_init(&s->mu, NULL) != 0) return -1;
    if (pipe(s->stop_pipe) != 0) return -1;
    s->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->listen_fd < 0) return -1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0; /* the kernel picks a free port */
    socklen_t alen = sizeof(a);
    if (bind(s->listen_fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(s->listen_fd, 16) != 0 ||
        getsockname(s->listen_fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    s->port = ntohs(a.sin_port);
    if (pthread_create(&s->thread, NULL, server_main, s) != 0) return -1;
    s->running = 1;
    return 0;
}

static void server_stop(dl_server *s) {
    if (s->running) {
        char c = 'q';
        while (write(s->stop_pipe[1], &c, 1) < 0 && errno == EINTR) {}
        pthread_join(s->thread, NULL);
        s->running = 0;
    }
    if (s->listen_fd >= 0) close(s->listen_fd);
    if (s->stop_pipe[0] >= 0) close(s->stop_pipe[0]);
    if (s->stop_pipe[1] >= 0) close(s->stop_pipe[1]);
    s->listen_fd = s->stop_pipe[0] = s->stop_pipe[1] = -1;
    pthread_mutex_destroy(&s->mu);
}

typedef struct {
    int n_requests;
    long long last_range;
    char last_auth[512];
} server_seen;

static server_seen server_snapshot(dl_server *s) {
    server_seen v;
    pthread_mutex_lock(&s->mu);
    v.n_requests = s->n_requests;
    v.last_range = s->last_range;
    memcpy(v.last_auth, s->last_auth, sizeof(v.last_auth));
    pthread_mutex_unlock(&s->mu);
    return v;
}

static void server_drop_next(dl_server *s, long long after) {
    pthread_mutex_lock(&s->mu);
    s->drop_after = after;
    pthread_mutex_unlock(&s->mu);
}

static void server_fail_next(dl_server *s, int status, int count) {
    pthread_mutex_lock(&s->mu);
    s->fail_status = status;
    s->fail_count = count;
    pthread_mutex_unlock(&s->mu);
}

/* ---- files ------------------------------------------------------------- */

static int write_file(const char *path, const void *data, size_t n, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) return -1;
    const char *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd);
}

/* Reads a whole file into a malloc'ed buffer; NULL when it cannot. */
static unsigned char *read_file(const char *path, size_t *n) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 0) {
        close(fd);
        return NULL;
    }
    size_t cap = (size_t)st.st_size;
    unsigned char *buf = malloc(cap + 1);
    size_t got = 0;
    while (buf && got < cap) {
        ssize_t r = read(fd, buf + got, cap - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (!buf || got != cap) {
        free(buf);
        return NULL;
    }
    buf[cap] = '\0';
    *n = cap;
    return buf;
}

static int file_equals(const char *path, const unsigned char *want, size_t n) {
    size_t got_n = 0;
    unsigned char *got = read_file(path, &got_n);
    int same = got && got_n == n && memcmp(got, want, n) == 0;
    free(got);
    return same;
}

static int exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static int remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[PATH_MAX];
        if ((size_t)snprintf(child, sizeof(child), "%s/%s", path, e->d_name) >= sizeof(child)) {
            rc = -1;
            continue;
        }
        if (remove_tree(child) != 0) rc = -1;
    }
    closedir(d);
    return rmdir(path) == 0 ? rc : -1;
}

/* Names in a directory, sorted and joined with '/', for before/after
 * comparisons. */
static void list_dir(const char *path, char *out, size_t cap) {
    out[0] = '\0';
    struct dirent **names = NULL;
    int n = scandir(path, &names, NULL, alphasort);
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        int w = snprintf(out + used, cap - used, "%s/", names[i]->d_name);
        if (w > 0 && (size_t)w < cap - used) used += (size_t)w;
        free(names[i]);
    }
    free(names);
}

/* Finds an executable in $PATH. */
static int find_program(const char *name, char *out, size_t cap) {
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof(dirs), "%s", path ? path : "/usr/bin:/bin");
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if ((size_t)snprintf(out, cap, "%s/%s", d, name) < cap && access(out, X_OK) == 0) return 0;
    }
    return -1;
}

/* ---- the fixture ------------------------------------------------------- */

typedef struct {
    const char *name;  /* the model argument */
    const char *file;  /* the published file name */
    size_t served;     /* bytes of the fake file on the server */
    size_t size;       /* bytes the manifest promises */
    char sha[65];      /* the manifest's sha256, or "-" */
    unsigned char *data;
} fake_model;

/* Path buffers: the temp dir name is short (mkdtemp of TMP_TEMPLATE), the
 * fixture's paths under it fit 160 bytes, programs found in $PATH fit
 * FX_PATH, and paths built from those fit BIG_PATH. */
#define TMP_TEMPLATE "/tmp/ds4cl-test-dl-XXXXXX"
#define FX_PATH 384
#define BIG_PATH 1024

typedef struct {
    char tmp[64];
    char srv_dir[160];
    char gguf[160]; /* repo/gguf: the script's directory */
    char script[192];
    char work[160];
    char home[160];
    char bin[160];
    char manifest[160];
    char out_path[160];
    char argv_log[160];
    char bash[FX_PATH];
    char curl[FX_PATH];
    char base[128];
    fake_model models[N_MODELS];
    dl_server server;
    int server_up;
    int status;          /* exit code of the last run, 128+signal, or -1 */
    char output[65536];  /* its stdout and stderr */
} dl_fixture;

enum { M_Q2, M_Q4, M_Q2I, M_Q4I, M_MTP };

static const char *const MODEL_NAMES[N_MODELS] = {"q2", "q4", "q2-imatrix", "q4-imatrix", "mtp"};
static const char *const MODEL_FILES[N_MODELS] = {
    "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2.gguf",
    "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2.gguf",
    "DeepSeek-V4-Flash-IQ2XXS-w2Q2K-AProjQ8-SExpQ8-OutQ8-chat-v2-imatrix.gguf",
    "DeepSeek-V4-Flash-Q4KExperts-F16HC-F16Compressor-F16Indexer-Q8Attn-Q8Shared-Q8Out-chat-v2-imatrix.gguf",
    "DeepSeek-V4-Flash-MTP-Q4K-Q8_0-F32.gguf",
};
static const size_t MODEL_SIZES[N_MODELS] = {40000, 65537, 12345, 23456, 3000};

static int sha256_file(const char *path, char out[65]) {
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof(cmd), "sha256sum -b '%s'", path); /* mkdtemp path: no quotes */
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    int ok = fscanf(p, "%64s", out) == 1 && strlen(out) == 64;
    return pclose(p) == 0 && ok ? 0 : -1;
}

static int fx_write_manifest(dl_fixture *fx) {
    char text[4096];
    size_t used = 0;
    used += (size_t)snprintf(text, sizeof(text), "# test manifest\n\n");
    for (int i = 0; i < N_MODELS; i++) {
        const fake_model *m = &fx->models[i];
        used += (size_t)snprintf(text + used, sizeof(text) - used, "%s\t%zu  %s %s\n", m->name, m->size, m->sha,
                                 m->file);
    }
    return write_file(fx->manifest, text, used, 0644);
}

static int copy_file(const char *from, const char *to, mode_t mode) {
    size_t n = 0;
    unsigned char *data = read_file(from, &n);
    if (!data) return -1;
    int rc = write_file(to, data, n, mode);
    free(data);
    return rc;
}

static void fx_close(dl_fixture *fx) {
    if (!fx) return;
    if (fx->server_up) server_stop(&fx->server);
    if (fx->tmp[0]) remove_tree(fx->tmp);
    for (int i = 0; i < N_MODELS; i++) free(fx->models[i].data);
    free(fx);
}

/* Builds the temp tree, the fake files and the manifest, and starts the
 * server; NULL (with a message) on failure. */
static dl_fixture *fx_open(void) {
    dl_fixture *fx = calloc(1, sizeof(*fx));
    if (!fx) return NULL;
    snprintf(fx->tmp, sizeof(fx->tmp), "%s", TMP_TEMPLATE);
    if (!mkdtemp(fx->tmp)) {
        fx->tmp[0] = '\0';
        goto fail;
    }
    if (find_program("bash", fx->bash, sizeof(fx->bash)) != 0 || find_program("curl", fx->curl, sizeof(fx->curl)) != 0) {
        fprintf(stderr, "    bash and curl are needed (Debian: apt-get install curl)\n");
        goto fail;
    }
    char path[BIG_PATH];
    const char *dirs[] = {"srv", "srv/antirez", "srv/antirez/deepseek-v4-gguf", "srv/antirez/deepseek-v4-gguf/resolve",
                          "srv/" REPO_PATH, "repo", "repo/gguf", "work", "home", "bin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", fx->tmp, dirs[i]);
        if (mkdir(path, 0755) != 0) goto fail;
    }
    snprintf(fx->srv_dir, sizeof(fx->srv_dir), "%s/srv/" REPO_PATH, fx->tmp);
    snprintf(fx->gguf, sizeof(fx->gguf), "%s/repo/gguf", fx->tmp);
    snprintf(fx->script, sizeof(fx->script), "%s/download.sh", fx->gguf);
    snprintf(fx->work, sizeof(fx->work), "%s/work", fx->tmp);
    snprintf(fx->home, sizeof(fx->home), "%s/home", fx->tmp);
    snprintf(fx->bin, sizeof(fx->bin), "%s/bin", fx->tmp);
    snprintf(fx->manifest, sizeof(fx->manifest), "%s/manifest", fx->tmp);
    snprintf(fx->out_path, sizeof(fx->out_path), "%s/output", fx->tmp);
    snprintf(fx->argv_log, sizeof(fx->argv_log), "%s/curl-argv", fx->tmp);

    snprintf(path, sizeof(path), "%s/gguf/download.sh", test_root_dir());
    if (copy_file(path, fx->script, 0755) != 0) {
        fprintf(stderr, "    cannot copy %s\n", path);
        goto fail;
    }
    static const char shim[] = "#!/bin/sh\n"
                               "for a in \"$@\"; do printf '%s\\n' \"$a\"; done >>\"$DS4CL_TEST_ARGV_LOG\"\n"
                               "exec \"$DS4CL_TEST_REAL_CURL\" \"$@\"\n";
    snprintf(path, sizeof(path), "%s/curl", fx->bin);
    if (write_file(path, shim, sizeof(shim) - 1, 0755) != 0) goto fail;

    test_rng rng = {0x5eedd0d0ULL};
    for (int i = 0; i < N_MODELS; i++) {
        fake_model *m = &fx->models[i];
        m->name = MODEL_NAMES[i];
        m->file = MODEL_FILES[i];
        m->served = m->size = MODEL_SIZES[i];
        m->data = malloc(m->served);
        if (!m->data) goto fail;
        for (size_t j = 0; j < m->served; j++) m->data[j] = (unsigned char)(test_rng_u64(&rng) >> 56);
        snprintf(path, sizeof(path), "%s/%s", fx->srv_dir, m->file);
        if (write_file(path, m->data, m->served, 0644) != 0 || sha256_file(path, m->sha) != 0) goto fail;
    }
    /* mtp: size known, sha256 unknown ("-"), as the script allows. */
    snprintf(fx->models[M_MTP].sha, sizeof(fx->models[M_MTP].sha), "-");
    if (fx_write_manifest(fx) != 0 || write_file(fx->out_path, "", 0, 0644) != 0) goto fail;

    snprintf(path, sizeof(path), "%s/srv", fx->tmp);
    if (server_start(&fx->server, path) != 0) {
        fprintf(stderr, "    cannot start the HTTP server: %s\n", strerror(errno));
        server_stop(&fx->server);
        goto fail;
    }
    fx->server_up = 1;
    snprintf(fx->base, sizeof(fx->base), "http://127.0.0.1:%d/" REPO_PATH, fx->server.port);
    return fx;
fail:
    fprintf(stderr, "    fixture setup failed in %s\n", fx->tmp);
    fx_close(fx);
    return NULL;
}

/* Runs `bash download.sh args...` in work/ with a clean environment plus
 * `env` (NULL-terminated "K=V" list, may be NULL); fills fx->status and
 * fx->output.  Returns -1 when the run could not be made or timed out. */
static int fx_run(dl_fixture *fx, const char *const *args, const char *const *env) {
    char *argv[32];
    int ac = 0;
    argv[ac++] = fx->bash;
    argv[ac++] = fx->script;
    for (; args && *args && ac < 31; args++) argv[ac++] = (char *)*args;
    argv[ac] = NULL;

    char e_path[BIG_PATH], e_home[BIG_PATH], e_base[256], e_manifest[BIG_PATH], e_log[BIG_PATH],
        e_curl[BIG_PATH];
    snprintf(e_path, sizeof(e_path), "PATH=%s:/usr/bin:/bin", fx->bin);
    snprintf(e_home, sizeof(e_home), "HOME=%s", fx->home);
    snprintf(e_base, sizeof(e_base), "DS4CL_HF_BASE=%s", fx->base);
    snprintf(e_manifest, sizeof(e_manifest), "DS4CL_DOWNLOAD_MANIFEST=%s", fx->manifest);
    snprintf(e_log, sizeof(e_log), "DS4CL_TEST_ARGV_LOG=%s", fx->argv_log);
    snprintf(e_curl, sizeof(e_curl), "DS4CL_TEST_REAL_CURL=%s", fx->curl);
    char *envp[32];
    int ec = 0;
    char *fixed[] = {e_path, e_home, e_base, e_manifest, e_log, e_curl,
                     "DS4CL_RETRIES=3", "DS4CL_RETRY_DELAY=0", "LC_ALL=C"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) envp[ec++] = fixed[i];
    for (; env && *env && ec < 31; env++) envp[ec++] = (char *)*env;
    envp[ec] = NULL;

    fx->status = -1;
    fx->output[0] = '\0';
    int out = open(fx->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(out);
        return -1;
    }
    if (pid == 0) {
        /* Only async-signal-safe calls between fork and exec. */
        setpgid(0, 0);
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(out, 2) < 0 || chdir(fx->work) != 0) _exit(126);
        execve(fx->bash, argv, envp);
        _exit(127);
    }
    close(out);
    /* Wait without reaping (WNOWAIT) so the process group id stays the
     * script's while its leftovers are killed, then reap it. */
    int st = 0, timed_out = 0;
    struct timespec nap = {0, 5 * 1000 * 1000};
    for (long waited_ms = 0;; waited_ms += 5) {
        siginfo_t info;
        memset(&info, 0, sizeof(info));
        int r = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT);
        if (r < 0 && errno != EINTR) {
            kill(-pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        if (r == 0 && info.si_pid == pid) break;
        if (waited_ms > RUN_TIMEOUT_S * 1000L) {
            timed_out = 1;
            break;
        }
        nanosleep(&nap, NULL);
    }
    kill(-pid, SIGKILL); /* nothing the script started may outlive it */
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    size_t n = 0;
    unsigned char *text = read_file(fx->out_path, &n);
    if (text) {
        if (n >= sizeof(fx->output)) n = sizeof(fx->output) - 1;
        memcpy(fx->output, text, n);
        fx->output[n] = '\0';
        free(text);
    }
    if (timed_out) {
        fprintf(stderr, "    download.sh timed out after %d s\n", RUN_TIMEOUT_S);
        return -1;
    }
    fx->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return 0;
}

static void fx_model_path(const dl_fixture *fx, const char *dir, int m, const char *suffix, char *out, size_t cap) {
    snprintf(out, cap, "%s/%s%s", dir, fx->models[m].file, suffix);
}

static void fx_link(const dl_fixture *fx, char *out, size_t cap) {
    ssize_t n;
    char path[BIG_PATH];
    snprintf(path, sizeof(path), "%s/ds4flash.gguf", fx->gguf);
    n = readlink(path, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
}

/* ---- tests ------------------------------------------------------------- */

#define RUN(fx, ...)                                                                 \
    do {                                                                             \
        const char *const run_args_[] = {__VA_ARGS__, NULL};                         \
        T_CHECK(fx_run((fx), run_args_, NULL) == 0, "run failed:\n%s", (fx)->output); \
    } while (0)

#define RUN_ENV(fx, envlist, ...)                                                      \
    do {                                                                               \
        const char *const run_args_[] = {__VA_ARGS__, NULL};                           \
        T_CHECK(fx_run((fx), run_args_, (envlist)) == 0, "run failed:\n%s", (fx)->output); \
    } while (0)

/* Fresh download, the link, a second run that skips, a truncated .part that
 * resumes, a dropped connection that resumes, mtp leaving the link alone,
 * and --dir with a relative path. */
static int fetch_body(dl_fixture *fx) {
    char path[BIG_PATH], link[PATH_MAX];
    RUN(fx, "q2");
    T_CHECK(fx->status == 0, "q2 exited %d:\n%s", fx->status, fx->output);
    fx_model_path(fx, fx->gguf, M_Q2, "", path, sizeof(path));
    T_CHECK(file_equals(path, fx->models[M_Q2].data, fx->models[M_Q2].size), "q2 content differs:\n%s", fx->output);
    fx_model_path(fx, fx->gguf, M_Q2, ".part", path, sizeof(path));
    T_CHECK(!exists(path), ".part left behind");
    fx_link(fx, link, sizeof(link));
    T_CHECK(strcmp(link, fx->models[M_Q2].file) == 0, "link -> '%s'", link);
    server_seen s = server_snapshot(&fx->server);
    T_CHECK(s.n_requests == 1 && s.last_range == -1, "%d requests, range %lld", s.n_requests, s.last_range);
    T_CHECK(s.last_auth[0] == '\0', "unexpected Authorization '%s'", s.last_auth);

    /* Second run: nothing fetched. */
    RUN(fx, "q2");
    T_CHECK(fx->status == 0, "second q2 exited %d:\n%s", fx->status, fx->output);
    T_CHECK(strstr(fx->output, "already downloaded") != NULL, "output:\n%s", fx->output);
    T_CHECK(server_snapshot(&fx->server).n_requests == 1, "second run made a request");

    /* A truncated partial download resumes where it stopped. */
    const size_t cut = 10007;
    fx_model_path(fx, fx->gguf, M_Q4, ".part", path, sizeof(path));
    T_CHECK(write_file(path, fx->models[M_Q4].data, cut, 0644) == 0, "write part");
    RUN(fx, "q4");
    T_CHECK(fx->status == 0, "q4 exited %d:\n%s", fx->status, fx->output);
    s = server_snapshot(&fx->server);
    T_CHECK(s.n_requests == 2 && s.last_range == (long long)cut, "%d requests, range %lld", s.n_requests,
            s.last_range);
    T_CHECK(strstr(fx->output, "resuming") != NULL, "output:\n%s", fx->output);
    fx_model_path(fx, fx->gguf, M_Q4, "", path, sizeof(path));
    T_CHECK(file_equals(path, fx->models[M_Q4].data, fx->models[M_Q4].size), "q4 content differs");
    fx_link(fx, link, sizeof(link));
    T_CHECK(strcmp(link, fx->models[M_Q4].file) == 0, "link -> '%s'", link);

    /* The connection drops after 1000 bytes: the script resumes at 1000.
     * mtp has no sha256 in this manifest and never moves the link. */
    server_drop_next(&fx->server, 1000);
    RUN(fx, "mtp");
    T_CHECK(fx->status == 0, "mtp exited %d:\n%s", fx->status, fx->output);
    s = server_snapshot(&fx->server);
    T_CHECK(s.n_requests == 4 && s.last_range == 1000, "%d requests, range %lld", s.n_requests, s.last_range);
    fx_model_path(fx, fx->gguf, M_MTP, "", path, sizeof(path));
    T_CHECK(file_equals(path, fx->models[M_MTP].data, fx->models[M_MTP].size), "mtp content differs");
    T_CHECK(strstr(fx->output, "size only") != NULL, "output:\n%s", fx->output);
    fx_link(fx, link, sizeof(link));
    T_CHECK(strcmp(link, fx->models[M_Q4].file) == 0, "mtp moved the link to '%s'", link);

    /* --dir, relative to the working directory: an absolute link. */
    RUN(fx, "--dir", "models", "q2-imatrix");
    T_CHECK(fx->status == 0, "--dir exited %d:\n%s", fx->status, fx->output);
    char work_real[PATH_MAX], want[PATH_MAX * 2];
    T_CHECK(realpath(fx->work, work_real) != NULL, "realpath");
    snprintf(want, sizeof(want), "%s/models/%s", work_real, fx->models[M_Q2I].file);
    T_CHECK(file_equals(want, fx->models[M_Q2I].data, fx->models[M_Q2I].size), "no %s", want);
    fx_link(fx, link, sizeof(link));
    T_CHECK(strcmp(link, want) == 0, "link -> '%s', want '%s'", link, want);
    return 0;
}

/* Downloads that must be refused: wrong sha256, more or fewer bytes than
 * promised, an oversized .part, a wrong-size file under the final name, a
 * 404, a ds4flash.gguf that is not a link; and --verify. */
static int verify_body(dl_fixture *fx) {
    char path[BIG_PATH], link[PATH_MAX];

    /* Same size, other bytes: the sha256 check fails, nothing is kept. */
    snprintf(fx->models[M_Q2I].sha, sizeof(fx->models[M_Q2I].sha), "%s", fx->models[M_Q2].sha);
    T_CHECK(fx_write_manifest(fx) == 0, "manifest");
    RUN(fx, "q2-imatrix");
    T_CHECK(fx->status == 1, "sha mismatch exited %d:\n%s", fx->status, fx->output);
    T_CHECK(strstr(fx->output, "sha256") != NULL, "output:\n%s", fx->output);
    fx_model_path(fx, fx->gguf, M_Q2I, "", path, sizeof(path));
    T_CHECK(!exists(path), "bad file kept");
    fx_model_path(fx, fx->gguf, M_Q2I, ".part", path, sizeof(path));
    T_CHECK(!exists(path), "bad .part kept");
    fx_link(fx, link, sizeof(link));
    T_CHECK(link[0] == '\0', "link made to a bad file: '%s'", link);

    /* The server sends more bytes than the manifest promises, then fewer. */
    const size_t promised[2] = {fx->models[M_Q4I].served - 100, fx->models[M_Q4I].served + 100};
    for (int i = 0; i < 2; i++) {
        fx->models[M_Q4I].size = promised[i];
        T_CHECK(fx_write_manifest(fx) == 0, "manifest");
        RUN(fx, "q4-imatrix");
        T_CHECK(fx->status == 1, "size %zu exited %d:\n%s", promised[i], fx->status, fx->output);
        T_CHECK(strstr(fx->output, "expected") != NULL, "output:\n%s", fx->output);
        fx_model_path(fx, fx->gguf, M_Q4I, "", path, sizeof(path));
        T_CHECK(!exists(path), "wrong-size file kept");
        fx_model_path(fx, fx->gguf, M_Q4I, ".part", path, sizeof(path));
        T_CHECK(!exists(path), "wrong-size .part kept");
    }

    /* A .part longer than the file: refused before any request. */
    int before = server_snapshot(&fx->server).n_requests;
    unsigned char *big = calloc(1, fx->models[M_Q2].size + 10);
    T_CHECK(big != NULL, "calloc");
    fx_model_path(fx, fx->gguf, M_Q2, ".part", path, sizeof(path));
    int wrc = write_file(path, big, fx->models[M_Q2].size + 10, 0644);
    free(big);
    T_CHECK(wrc == 0, "write part");
    RUN(fx, "q2");
    T_CHECK(fx->status == 1 && strstr(fx->output, "larger"), "oversized part exited %d:\n%s", fx->status,
            fx->output);
    T_CHECK(server_snapshot(&fx->server).n_requests == before, "requested despite a bad part");
    T_CHECK(unlink(path) == 0, "the .part was not left for the user");

    /* A wrong-size file under the final name is reported, not replaced. */
    fx_model_path(fx, fx->gguf, M_Q4, "", path, sizeof(path));
    T_CHECK(write_file(path, "short", 5, 0644) == 0, "write");
    RUN(fx, "q4");
    T_CHECK(fx->status == 1 && strstr(fx->output, "remove it"), "wrong-size final exited %d:\n%s", fx->status,
            fx->output);
    T_CHECK(file_equals(path, (const unsigned char *)"short", 5), "user file changed");
    T_CHECK(server_snapshot(&fx->server).n_requests == before, "requested despite a final file");
    T_CHECK(unlink(path) == 0, "unlink");

    /* 404: the manifest names a file the server does not have. */
    fx->models[M_MTP].file = "DeepSeek-V4-Flash-MTP-missing.gguf";
    T_CHECK(fx_write_manifest(fx) == 0, "manifest");
    RUN(fx, "mtp");
    T_CHECK(fx->status == 1 && strstr(fx->output, "HTTP 404"), "404 exited %d:\n%s", fx->status, fx->output);
    fx->models[M_MTP].file = MODEL_FILES[M_MTP];
    T_CHECK(fx_write_manifest(fx) == 0, "manifest");

    /* A 503 is retried; 401 is not; a server that keeps failing is given up
     * on after DS4CL_RETRIES (3) tries. */
    fx_model_path(fx, fx->gguf, M_MTP, "", path, sizeof(path));
    before = server_snapshot(&fx->server).n_requests;
    server_fail_next(&fx->server, 503, 1);
    RUN(fx, "mtp");
    T_CHECK(fx->status == 0 && strstr(fx->output, "HTTP 503"), "503 exited %d:\n%s", fx->status, fx->output);
    T_CHECK(file_equals(path, fx->models[M_MTP].data, fx->models[M_MTP].size), "mtp content after a 503");
    T_CHECK(server_snapshot(&fx->server).n_requests == before + 2, "503 not retried once");
    T_CHECK(unlink(path) == 0, "unlink");
    server_fail_next(&fx->server, 401, 1);
    RUN(fx, "mtp");
    T_CHECK(fx->status == 1 && strstr(fx->output, "needs a Hugging Face token"), "401 exited %d:\n%s", fx->status,
            fx->output);
    T_CHECK(server_snapshot(&fx->server).n_requests == before + 3, "401 was retried");
    server_fail_next(&fx->server, 502, 100);
    RUN(fx, "mtp");
    T_CHECK(fx->status == 1 && strstr(fx->output, "gave up after 3 attempts"), "502s exited %d:\n%s", fx->status,
            fx->output);
    T_CHECK(server_snapshot(&fx->server).n_requests == before + 6, "502s: %d requests",
            server_snapshot(&fx->server).n_requests - before);
    server_fail_next(&fx->server, 0, 0);
    T_CHECK(!exists(path), "a failed download left %s", path);

    /* --verify re-hashes a finished file and catches a flipped byte. */
    RUN(fx, "q2");
    T_CHECK(fx->status == 0, "q2 exited %d:\n%s", fx->status, fx->output);
    RUN(fx, "q2", "--verify");
    T_CHECK(fx->status == 0 && strstr(fx->output, "checking the sha256"), "--verify exited %d:\n%s", fx->status,
            fx->output);
    fx_model_path(fx, fx->gguf, M_Q2, "", path, sizeof(path));
    fx->models[M_Q2].data[777] ^= 0x40;
    wrc = write_file(path, fx->models[M_Q2].data, fx->models[M_Q2].size, 0644);
    fx->models[M_Q2].data[777] ^= 0x40;
    T_CHECK(wrc == 0, "write");
    RUN(fx, "q2", "--verify");
    T_CHECK(fx->status == 1 && strstr(fx->output, "does not match"), "corrupt --verify exited %d:\n%s",
            fx->status, fx->output);

    /* A ds4flash.gguf that is a real file is never replaced. */
    char lpath[BIG_PATH];
    snprintf(lpath, sizeof(lpath), "%s/ds4flash.gguf", fx->gguf);
    T_CHECK(unlink(lpath) == 0, "unlink link");
    T_CHECK(write_file(lpath, "mine", 4, 0644) == 0, "write");
    RUN(fx, "q4");
    T_CHECK(fx->status == 1 && strstr(fx->output, "not a symlink"), "exited %d:\n%s", fx->status, fx->output);
    T_CHECK(file_equals(lpath, (const unsigned char *)"mine", 4), "user's ds4flash.gguf replaced");
    return 0;
}

static int argv_log_contains(dl_fixture *fx, const char *needle, int *found) {
    size_t n = 0;
    unsigned char *log = read_file(fx->argv_log, &n);
    if (!log) return -1;
    *found = strstr((const char *)log, needle) != NULL;
    free(log);
    return 0;
}

/* The token reaches the server as a bearer header from each source, in
 * order of precedence, and never shows in curl's argv. */
static int token_body(dl_fixture *fx) {
    char path[BIG_PATH];
    fx_model_path(fx, fx->gguf, M_MTP, "", path, sizeof(path));
    struct {
        const char *flag; /* --token value or NULL */
        const char *env;  /* HF_TOKEN=... or NULL */
        const char *file; /* token file content or NULL */
        const char *want; /* expected Authorization header */
    } cases[] = {
        {NULL, NULL, NULL, ""},
        {"hf_FromFlag123", NULL, NULL, "Bearer hf_FromFlag123"},
        {NULL, "HF_TOKEN=hf_FromEnv456", NULL, "Bearer hf_FromEnv456"},
        {NULL, NULL, "hf_FromFile789\n", "Bearer hf_FromFile789"},
        {"hf_FlagWins", "HF_TOKEN=hf_EnvLoses", "hf_FileLoses\n", "Bearer hf_FlagWins"},
        {NULL, "HF_TOKEN=hf_EnvWins", "hf_FileLoses\n", "Bearer hf_EnvWins"},
    };
    char dir[BIG_PATH], tfile[BIG_PATH + 16];
    snprintf(dir, sizeof(dir), "%s/.cache", fx->home);
    T_CHECK(mkdir(dir, 0700) == 0, "mkdir");
    snprintf(dir, sizeof(dir), "%s/.cache/huggingface", fx->home);
    T_CHECK(mkdir(dir, 0700) == 0, "mkdir");
    snprintf(tfile, sizeof(tfile), "%s/token", dir);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unlink(path);
        unlink(tfile);
        unlink(fx->argv_log);
        if (cases[i].file) T_CHECK(write_file(tfile, cases[i].file, strlen(cases[i].file), 0600) == 0, "token file");
        const char *env[] = {cases[i].env, NULL};
        if (cases[i].flag) {
            RUN_ENV(fx, env, "mtp", "--token", cases[i].flag);
        } else {
            RUN_ENV(fx, env, "mtp");
        }
        T_CHECK(fx->status == 0, "case %zu exited %d:\n%s", i, fx->status, fx->output);
        server_seen s = server_snapshot(&fx->server);
        T_CHECK(strcmp(s.last_auth, cases[i].want) == 0, "case %zu: Authorization '%s', want '%s'", i, s.last_auth,
                cases[i].want);
        T_CHECK(file_equals(path, fx->models[M_MTP].data, fx->models[M_MTP].size), "case %zu: content", i);
        int seen_url = 0, seen_token = 1;
        T_CHECK(argv_log_contains(fx, fx->models[M_MTP].file, &seen_url) == 0 && seen_url,
                "case %zu: the curl shim did not run", i);
        T_CHECK(argv_log_contains(fx, "hf_", &seen_token) == 0 && !seen_token, "case %zu: token in curl's argv", i);
    }
    return 0;
}

/* Hostile arguments and token sources: refused with a usage error, no
 * request made, no HACKED file and no new file anywhere in the temp tree
 * or the repository's gguf/. */
static int hostile_body(dl_fixture *fx) {
    char before_tmp[4096], before_work[4096], before_gguf[4096], before_home[4096], before_repo[8192];
    char after[8192], repo_gguf[PATH_MAX + 16];
    snprintf(repo_gguf, sizeof(repo_gguf), "%s/gguf", test_root_dir());
    list_dir(fx->tmp, before_tmp, sizeof(before_tmp));
    list_dir(fx->work, before_work, sizeof(before_work));
    list_dir(fx->gguf, before_gguf, sizeof(before_gguf));
    list_dir(fx->home, before_home, sizeof(before_home));
    list_dir(repo_gguf, before_repo, sizeof(before_repo));

    static const char *const bad[][4] = {
        {"q2", "--token", "$(touch HACKED)", NULL},
        {"q2", "--token", "`touch HACKED`", NULL},
        {"q2", "--token=$(touch HACKED)", NULL},
        {"q2", "--token", "a'b\"c", NULL},
        {"q2", "--token", "x\ny", NULL},
        {"q2", "--token", "two words", NULL},
        {"q2", "--token", "hf_x\"\nurl = \"file:///etc/passwd", NULL},
        {"q2", "--token", "hf_x\\", NULL},
        {"../../etc", NULL},
        {"q2; touch HACKED", NULL},
        {"q2$(touch HACKED)", NULL},
        {"`touch HACKED`", NULL},
        {"q2\n", NULL},
        {"/etc/passwd", NULL},
        {"q2 q4", NULL},
        {"Q2", NULL},
        {"q2", "--token", NULL},
        {"q2", "--dir", NULL},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        T_CHECK(fx_run(fx, bad[i], NULL) == 0, "run %zu failed", i);
        T_CHECK(fx->status == 2, "case %zu exited %d:\n%s", i, fx->status, fx->output);
        T_CHECK(strstr(fx->output, "download.sh:") != NULL, "case %zu: no message:\n%s", i, fx->output);
    }
    /* Hostile tokens from the environment and the token file. */
    const char *env_bad[] = {"HF_TOKEN=$(touch HACKED)", NULL};
    RUN_ENV(fx, env_bad, "q2");
    T_CHECK(fx->status == 2, "hostile HF_TOKEN exited %d:\n%s", fx->status, fx->output);
    char tfile[BIG_PATH];
    snprintf(tfile, sizeof(tfile), "%s/hf-token", fx->tmp);
    T_CHECK(write_file(tfile, "$(touch HACKED)\n", 16, 0600) == 0, "token file");
    char env_path[BIG_PATH + 32];
    snprintf(env_path, sizeof(env_path), "HF_TOKEN_PATH=%s", tfile);
    const char *env_file[] = {env_path, NULL};
    RUN_ENV(fx, env_file, "q2");
    T_CHECK(fx->status == 2, "hostile token file exited %d:\n%s", fx->status, fx->output);
    T_CHECK(unlink(tfile) == 0, "unlink");
    T_CHECK(server_snapshot(&fx->server).n_requests == 0, "a hostile run reached the server");

    list_dir(fx->tmp, after, sizeof(after));
    T_CHECK(strcmp(after, before_tmp) == 0, "temp root changed: %s -> %s", before_tmp, after);
    list_dir(fx->work, after, sizeof(after));
    T_CHECK(strcmp(after, before_work) == 0, "work/ changed: '%s' -> '%s'", before_work, after);
    list_dir(fx->gguf, after, sizeof(after));
    T_CHECK(strcmp(after, before_gguf) == 0, "gguf/ changed: '%s' -> '%s'", before_gguf, after);
    list_dir(fx->home, after, sizeof(after));
    T_CHECK(strcmp(after, before_home) == 0, "home/ changed: '%s' -> '%s'", before_home, after);
    list_dir(repo_gguf, after, sizeof(after));
    T_CHECK(strcmp(after, before_repo) == 0, "the repository's gguf/ changed");

    /* A hostile --dir is only a directory name: taken literally. */
    RUN(fx, "mtp", "--dir", "$(touch HACKED)");
    T_CHECK(fx->status == 0, "literal --dir exited %d:\n%s", fx->status, fx->output);
    char path[BIG_PATH];
    snprintf(path, sizeof(path), "%s/$(touch HACKED)/%s", fx->work, fx->models[M_MTP].file);
    T_CHECK(file_equals(path, fx->models[M_MTP].data, fx->models[M_MTP].size), "not in the literal dir");
    RUN(fx, "mtp", "--dir", "a\nb");
    T_CHECK(fx->status == 1 && strstr(fx->output, "control"), "newline --dir exited %d:\n%s", fx->status,
            fx->output);
    const char *where[] = {fx->tmp, fx->work, fx->gguf, fx->home, repo_gguf};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
        snprintf(path, sizeof(path), "%s/HACKED", where[i]);
        T_CHECK(!exists(path), "%s exists", path);
    }
    return 0;
}

/* Command-line mistakes: exit 2 with a message, --help exits 0. */
static int usage_body(dl_fixture *fx) {
    static const struct {
        const char *args[4];
        int status;
        const char *text;
    } cases[] = {
        {{NULL}, 2, "no model"},
        {{"bogus", NULL}, 2, "unknown model"},
        {{"q2", "--bogus", NULL}, 2, "unknown option"},
        {{"q2", "q4", NULL}, 2, "unexpected argument"},
        {{"q2", "--token", NULL}, 2, "needs a value"},
        {{"--dir", "", "q2", NULL}, 2, "needs a value"},
        {{"--help", NULL}, 0, "usage:"},
        {{"-h", NULL}, 0, "q4-imatrix"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        T_CHECK(fx_run(fx, cases[i].args, NULL) == 0, "run %zu failed", i);
        T_CHECK(fx->status == cases[i].status, "case %zu exited %d:\n%s", i, fx->status, fx->output);
        T_CHECK(strstr(fx->output, cases[i].text) != NULL, "case %zu output:\n%s", i, fx->output);
    }
    /* A broken manifest is an error, not a guess. */
    static const char broken[] = "q2 12x 0000 file.gguf\n";
    T_CHECK(write_file(fx->manifest, broken, sizeof(broken) - 1, 0644) == 0, "manifest");
    RUN(fx, "q2");
    T_CHECK(fx->status == 1 && strstr(fx->output, "manifest line 1"), "exited %d:\n%s", fx->status, fx->output);
    static const char traversal[] = "q2 100 - ../escape.gguf\n";
    T_CHECK(write_file(fx->manifest, traversal, sizeof(traversal) - 1, 0644) == 0, "manifest");
    RUN(fx, "q2");
    T_CHECK(fx->status == 1 && strstr(fx->output, "bad file name"), "exited %d:\n%s", fx->status, fx->output);
    T_CHECK(server_snapshot(&fx->server).n_requests == 0, "a usage error reached the server");
    return 0;
}

static int with_fixture(int (*body)(dl_fixture *)) {
    dl_fixture *fx = fx_open();
    T_CHECK(fx != NULL, "fixture");
    int rc = body(fx);
    fx_close(fx);
    return rc;
}

static int t_download_fetch(void) { return with_fixture(fetch_body); }
static int t_download_verify(void) { return with_fixture(verify_body); }
static int t_download_token(void) { return with_fixture(token_body); }
static int t_download_hostile(void) { return with_fixture(hostile_body); }
static int t_download_usage(void) { return with_fixture(usage_body); }

void tests_register_download(void) {
    test_add("download_fetch_resume_link", t_download_fetch);
    test_add("download_verify_rejects", t_download_verify);
    test_add("download_token_header", t_download_token);
    test_add("download_hostile_args", t_download_hostile);
    test_add("download_usage", t_download_usage);
}
