/*
 * The HTTP section's local web service and its bulk client (bench/http.ts), in one program.
 *
 * httpbench serve THREADS MAXBYTES
 *   An HTTP/1.1 keep-alive server on 127.0.0.1:0 (epoll, one loop per thread, SO_REUSEPORT), fast
 *   enough never to be what a figure measures. Prints "port N" once listening; exits when stdin closes.
 *     GET  /small              200, a 1,400-byte text body (wrk's small GET)
 *     POST /post               body read and dropped; 200 "ok"
 *     POST /upload?id=ID       body kept in memory (not hashed while it arrives); 200 "BYTES\n"
 *     GET  /hash?id=ID         200, sha256 hex of upload ID (computed now, after the timed part)
 *     GET  /download?n=N       200 with Content-Length N: the first N bytes of a splitmix64 stream
 *     GET  /stats              {"connections":C,"requests":R}: connections that carried a request, and
 *                              requests answered, so far (/stats itself not counted)
 *   Request bodies may be Content-Length or chunked (a proxy may re-frame them); pipelined requests are
 *   answered in order.
 *
 * httpbench up|down PORT BYTES HOST
 *   One request to 127.0.0.1:PORT with `Host: HOST`: an upload of BYTES (Content-Length), or a
 *   download of BYTES. The data (or the expected stream) and its sha256 are made first; then the
 *   program prints "ready", waits for a line on stdin, and times the request alone, from connect to
 *   the last byte of the response. It prints one JSON line for the timed part ("phase":"timed", with
 *   its own CPU seconds over it), then checks sha256 (the download's own bytes, or the server's hash
 *   of the upload via /hash) and prints the final JSON line. Bounded by env BENCH_TIMEOUT seconds
 *   (default 120, SIGALRM).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"

#define IN_CAP (256 * 1024)
#define MAX_HEAD (64 * 1024)
#define MAX_THREADS 8
#define SEED_DOWN 0x5eed0001ULL
#define SEED_UP 0x5eed0002ULL

static void die(const char *what) {
  perror(what);
  exit(1);
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* The first n bytes of the splitmix64 stream of `seed`, in a new buffer (pages touched). */
static unsigned char *pattern(uint64_t seed, size_t n) {
  unsigned char *p = malloc(n + 8);
  if (!p) die("malloc");
  uint64_t s = seed;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = splitmix(&s);
    memcpy(p + i, &v, 8);
  }
  return p;
}

static void hex_of(const unsigned char *p, size_t n, char out[65]) {
  sha256_ctx c;
  unsigned char d[32];
  sha256_init(&c);
  sha256_update(&c, p, n);
  sha256_final(&c, d);
  sha256_hex(d, out);
}

/* ---------- chunked transfer coding, streaming ---------- */

enum { CK_SIZE, CK_DATA, CK_DATA_CR, CK_DATA_LF, CK_TRAILER, CK_DONE };

struct dechunk {
  int state;
  uint64_t left;
  int line_len;
  char line[256];
};

typedef int (*sink_fn)(void *ctx, const unsigned char *p, size_t n);

/* Feeds n bytes; body bytes go to sink. Returns bytes consumed (stops after the last chunk's
 * trailer), or -1 on a framing error or when the sink refuses. */
static long dechunk_feed(struct dechunk *d, const unsigned char *in, size_t n, sink_fn sink, void *ctx) {
  size_t i = 0;
  while (i < n && d->state != CK_DONE) {
    if (d->state == CK_DATA) {
      size_t take = n - i < d->left ? n - i : (size_t)d->left;
      if (sink(ctx, in + i, take) < 0) return -1;
      i += take;
      d->left -= take;
      if (d->left == 0) d->state = CK_DATA_CR;
      continue;
    }
    unsigned char ch = in[i++];
    if (d->state == CK_DATA_CR) {
      if (ch != '\r') return -1;
      d->state = CK_DATA_LF;
    } else if (d->state == CK_DATA_LF) {
      if (ch != '\n') return -1;
      d->state = CK_SIZE;
    } else if (ch != '\n') {
      if (d->line_len >= (int)sizeof d->line - 1) return -1;
      d->line[d->line_len++] = (char)ch;
    } else {
      if (d->line_len > 0 && d->line[d->line_len - 1] == '\r') d->line_len--;
      d->line[d->line_len] = 0;
      int len = d->line_len;
      d->line_len = 0;
      if (d->state == CK_TRAILER) {
        if (len == 0) d->state = CK_DONE;
        continue;
      }
      char *end;
      unsigned long long size = strtoull(d->line, &end, 16);
      if (end == d->line) return -1;
      if (size == 0) d->state = CK_TRAILER;
      else {
        d->left = size;
        d->state = CK_DATA;
      }
    }
  }
  return (long)i;
}

/* ---------- request heads ---------- */

/* Value of header `name` in head [p, p+n) (lines after the first), NUL-terminated into out; 0 if absent. */
static int header_value(const char *p, size_t n, const char *name, char *out, size_t cap) {
  size_t name_len = strlen(name);
  const char *end = p + n;
  const char *line = memchr(p, '\n', n);
  while (line && line + 1 < end) {
    line++;
    const char *eol = memchr(line, '\n', (size_t)(end - line));
    if (!eol) break;
    if ((size_t)(eol - line) > name_len && line[name_len] == ':' && strncasecmp(line, name, name_len) == 0) {
      const char *v = line + name_len + 1;
      while (v < eol && (*v == ' ' || *v == '\t')) v++;
      const char *ve = eol;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ')) ve--;
      size_t len = (size_t)(ve - v) < cap - 1 ? (size_t)(ve - v) : cap - 1;
      memcpy(out, v, len);
      out[len] = 0;
      return 1;
    }
    line = eol;
  }
  return 0;
}

/* ---------- server ---------- */

static const char SMALL_BODY_LINE[] = "<p>sockets bench: a small page of about 1.4 KB, as a static file would be.</p>\n";
static char small_body[1400];
static unsigned char *down_data;
static size_t down_max;
static int port;

/* The one upload kept for /hash (the bench uploads one at a time). */
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned char *store;
static size_t store_len, store_cap;
static char store_id[64];

enum route { R_NONE, R_SMALL, R_POST, R_UPLOAD, R_HASH, R_DOWNLOAD, R_STATS, R_NOT_FOUND, R_BAD };

static uint64_t connections, requests; /* atomic */

struct conn {
  int fd;
  int want_out; /* EPOLLOUT armed (reading paused) */
  unsigned char in[IN_CAP];
  size_t in_off, in_len;
  int in_body; /* 1: reading a request body */
  int chunked;
  uint64_t body_left;
  struct dechunk dc;
  enum route route;
  char id[64];
  uint64_t n; /* download size */
  int close_after;
  int served; /* answered a request other than /stats */
  /* output: a head (and small body) in hdr, then body bytes from `body` */
  char hdr[2048];
  size_t hdr_off, hdr_len;
  const unsigned char *body;
  size_t body_off, body_len;
};

static int store_sink(void *ctx, const unsigned char *p, size_t n) {
  (void)ctx;
  if (store_len + n > store_cap) {
    size_t cap = store_cap ? store_cap : (1 << 20);
    while (cap < store_len + n) cap *= 2;
    unsigned char *grown = realloc(store, cap);
    if (!grown) return -1;
    store = grown;
    store_cap = cap;
  }
  memcpy(store + store_len, p, n);
  store_len += n;
  return 0;
}

static int drop_sink(void *ctx, const unsigned char *p, size_t n) {
  (void)ctx;
  (void)p;
  (void)n;
  return 0;
}

static void respond(struct conn *c, int status, const char *type, const void *body, size_t len, int copy) {
  const char *reason = status == 200 ? "OK" : status == 404 ? "Not Found" : "Bad Request";
  int h = snprintf(c->hdr, sizeof c->hdr,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status, reason,
                   type, len, c->close_after ? "Connection: close\r\n" : "");
  c->hdr_off = 0;
  c->hdr_len = (size_t)h;
  c->body_off = 0;
  if (copy && len <= sizeof c->hdr - (size_t)h) {
    memcpy(c->hdr + h, body, len);
    c->hdr_len += len;
    c->body = NULL;
    c->body_len = 0;
  } else {
    c->body = body;
    c->body_len = len;
  }
}

static void answer(struct conn *c) {
  char text[80];
  if (c->route != R_STATS) {
    __atomic_fetch_add(&requests, 1, __ATOMIC_RELAXED);
    if (!c->served) __atomic_fetch_add(&connections, 1, __ATOMIC_RELAXED);
    c->served = 1;
  }
  switch (c->route) {
    case R_STATS: {
      int n = snprintf(text, sizeof text, "{\"connections\":%llu,\"requests\":%llu}",
                       (unsigned long long)__atomic_load_n(&connections, __ATOMIC_RELAXED),
                       (unsigned long long)__atomic_load_n(&requests, __ATOMIC_RELAXED));
      respond(c, 200, "application/json", text, (size_t)n, 1);
      break;
    }
    case R_SMALL:
      respond(c, 200, "text/html", small_body, sizeof small_body, 0);
      break;
    case R_POST:
      respond(c, 200, "text/plain", "ok", 2, 1);
      break;
    case R_UPLOAD: {
      int n = snprintf(text, sizeof text, "%zu\n", store_len);
      respond(c, 200, "text/plain", text, (size_t)n, 1);
      break;
    }
    case R_HASH: {
      char hex[65];
      pthread_mutex_lock(&store_lock);
      int found = strcmp(store_id, c->id) == 0;
      if (found) hex_of(store, store_len, hex);
      pthread_mutex_unlock(&store_lock);
      if (found) respond(c, 200, "text/plain", hex, 64, 1);
      else respond(c, 404, "text/plain", "no such upload\n", 15, 1);
      break;
    }
    case R_DOWNLOAD:
      respond(c, 200, "application/octet-stream", down_data, (size_t)c->n, 0);
      break;
    case R_BAD:
      c->close_after = 1;
      respond(c, 400, "text/plain", "bad request\n", 12, 1);
      break;
    default:
      respond(c, 404, "text/plain", "not found\n", 10, 1);
  }
}

/* Parses one head of `len` bytes at in+in_off; sets the route and body framing. */
static void parse_head(struct conn *c, const char *h, size_t len) {
  char method[16] = {0}, target[512] = {0}, version[16] = {0}, v[128];
  c->route = R_NOT_FOUND;
  c->chunked = 0;
  c->body_left = 0;
  c->close_after = 0;
  if (sscanf(h, "%15s %511s %15s", method, target, version) != 3) {
    c->route = R_BAD;
    return;
  }
  if (header_value(h, len, "transfer-encoding", v, sizeof v)) c->chunked = strcasestr(v, "chunked") != NULL;
  if (header_value(h, len, "content-length", v, sizeof v)) c->body_left = strtoull(v, NULL, 10);
  int has_conn = header_value(h, len, "connection", v, sizeof v);
  if (strcmp(version, "HTTP/1.0") == 0) c->close_after = !(has_conn && strcasestr(v, "keep-alive"));
  else c->close_after = has_conn && strcasestr(v, "close") != NULL;
  const char *q = strchr(target, '?');
  size_t path_len = q ? (size_t)(q - target) : strlen(target);
  const char *arg = q ? strchr(q, '=') : NULL;
  arg = arg ? arg + 1 : "";
#define PATH_IS(s) (path_len == strlen(s) && strncmp(target, s, path_len) == 0)
  if (PATH_IS("/small") && strcmp(method, "GET") == 0) c->route = R_SMALL;
  else if (PATH_IS("/post") && strcmp(method, "POST") == 0) c->route = R_POST;
  else if (PATH_IS("/upload") && strcmp(method, "POST") == 0) {
    c->route = R_UPLOAD;
    pthread_mutex_lock(&store_lock);
    snprintf(store_id, sizeof store_id, "%s", arg);
    store_len = 0;
    pthread_mutex_unlock(&store_lock);
  } else if (PATH_IS("/stats")) {
    c->route = R_STATS;
  } else if (PATH_IS("/hash")) {
    c->route = R_HASH;
    snprintf(c->id, sizeof c->id, "%s", arg);
  } else if (PATH_IS("/download")) {
    c->n = strtoull(arg, NULL, 10);
    c->route = c->n <= down_max ? R_DOWNLOAD : R_BAD;
  }
#undef PATH_IS
  memset(&c->dc, 0, sizeof c->dc);
}

static void set_out(int ep, struct conn *c, int want) {
  if (c->want_out == want) return;
  c->want_out = want;
  struct epoll_event ev = {.events = want ? EPOLLOUT : EPOLLIN, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes pending output: 1 all sent, 0 would block, -1 error. */
static int flush_out(struct conn *c) {
  while (c->hdr_off < c->hdr_len || c->body_off < c->body_len) {
    struct iovec iov[2];
    int k = 0;
    if (c->hdr_off < c->hdr_len) iov[k++] = (struct iovec){c->hdr + c->hdr_off, c->hdr_len - c->hdr_off};
    if (c->body_off < c->body_len)
      iov[k++] = (struct iovec){(void *)(c->body + c->body_off), c->body_len - c->body_off};
    ssize_t w = writev(c->fd, iov, k);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN ? 0 : -1;
    }
    size_t left = (size_t)w, h = c->hdr_len - c->hdr_off;
    size_t from_hdr = left < h ? left : h;
    c->hdr_off += from_hdr;
    c->body_off += left - from_hdr;
  }
  return 1;
}

/* Handles what is buffered: 1 keep going, 0 wait (output blocked or head incomplete), -1 close. */
static int process(struct conn *c) {
  for (int guard = 0; guard < 100000; guard++) {
    if (c->hdr_off < c->hdr_len || c->body_off < c->body_len) {
      int r = flush_out(c);
      if (r <= 0) return r;
      if (c->close_after) return -1;
    }
    size_t avail = c->in_len - c->in_off;
    if (avail == 0) return 1;
    unsigned char *p = c->in + c->in_off;
    if (!c->in_body) {
      unsigned char *end = memmem(p, avail, "\r\n\r\n", 4);
      if (!end) return avail >= MAX_HEAD ? -1 : 1;
      size_t len = (size_t)(end - p) + 4;
      char saved = (char)p[len - 1];
      p[len - 1] = 0;
      parse_head(c, (const char *)p, len - 1);
      p[len - 1] = (unsigned char)saved;
      c->in_off += len;
      if (c->chunked || c->body_left > 0) c->in_body = 1;
      else answer(c);
      continue;
    }
    sink_fn sink = c->route == R_UPLOAD ? store_sink : drop_sink;
    if (c->chunked) {
      long used = dechunk_feed(&c->dc, p, avail, sink, c);
      if (used < 0) return -1;
      c->in_off += (size_t)used;
      if (c->dc.state != CK_DONE) continue;
    } else {
      size_t take = avail < c->body_left ? avail : (size_t)c->body_left;
      if (sink(c, p, take) < 0) return -1;
      c->in_off += take;
      c->body_left -= take;
      if (c->body_left > 0) continue;
    }
    c->in_body = 0;
    answer(c);
  }
  return 1;
}

static void finish(int ep, struct conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c);
}

static void on_event(int ep, struct conn *c, uint32_t events) {
  if (events & (EPOLLERR | EPOLLHUP) && !(events & EPOLLIN)) {
    finish(ep, c);
    return;
  }
  int r = process(c);
  for (int rounds = 0; r > 0 && rounds < 16; rounds++) {
    if (c->in_off == c->in_len) c->in_off = c->in_len = 0;
    else if (c->in_len == IN_CAP) {
      memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
      c->in_len -= c->in_off;
      c->in_off = 0;
    }
    ssize_t n = read(c->fd, c->in + c->in_len, IN_CAP - c->in_len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) break;
    if (n <= 0) {
      r = -1;
      break;
    }
    c->in_len += (size_t)n;
    r = process(c);
  }
  if (r < 0) finish(ep, c);
  else set_out(ep, c, c->hdr_off < c->hdr_len || c->body_off < c->body_len);
}

static int listen_socket(int want_port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(want_port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(fd, 4096) < 0) die("listen");
  socklen_t len = sizeof addr;
  getsockname(fd, (struct sockaddr *)&addr, &len);
  port = ntohs(addr.sin_port);
  return fd;
}

static void *serve_loop(void *arg) {
  int lfd = (int)(intptr_t)arg;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; i++) {
      struct conn *c = events[i].data.ptr;
      if (c) {
        on_event(ep, c, events[i].events);
        continue;
      }
      for (int k = 0; k < 64; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) break;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *nc = calloc(1, sizeof *nc);
        if (!nc) die("calloc");
        nc->fd = fd;
        struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
      }
    }
  }
  return NULL;
}

static int serve(int threads, size_t max) {
  for (size_t i = 0; i < sizeof small_body; i++)
    small_body[i] = SMALL_BODY_LINE[i % (sizeof SMALL_BODY_LINE - 1)];
  down_max = max;
  down_data = pattern(SEED_DOWN, max);
  int first = listen_socket(0);
  for (int t = 0; t < threads; t++) {
    int fd = t == 0 ? first : listen_socket(port);
    pthread_t th;
    pthread_create(&th, NULL, serve_loop, (void *)(intptr_t)fd);
  }
  printf("port %d\n", port);
  fflush(stdout);
  char b[64];
  while (read(0, b, sizeof b) > 0) {
  }
  return 0;
}

/* ---------- client ---------- */

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
         (double)ru.ru_stime.tv_usec / 1e6;
}

struct buf {
  unsigned char *p;
  size_t len, cap;
};

static int buf_sink(void *ctx, const unsigned char *p, size_t n) {
  struct buf *b = ctx;
  if (b->len + n > b->cap) return -1;
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return 0;
}

/* What one exchange got back. */
struct response {
  int status;
  int has_length; /* the response had Content-Length */
  int chunked;
  const char *error;
};

static int connect_to(int p) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(p)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

/*
 * Sends head + body on a new connection while reading, and reads one final response (1xx skipped) into
 * `into`. An early final response stops the upload.
 */
static struct response exchange(int p, const char *head, const unsigned char *body, size_t body_len,
                                struct buf *into) {
  struct response r = {0};
  int fd = connect_to(p);
  size_t head_len = strlen(head), sent = 0, total = head_len + body_len;
  static unsigned char rb[IN_CAP];
  size_t rlen = 0;
  int have_head = 0, eof = 0, done = 0;
  uint64_t left = 0;
  struct dechunk dc = {0};
  while (!done) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < total && !have_head ? POLLOUT : 0)};
    if (poll(&pfd, 1, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (pfd.revents & POLLOUT) {
      struct iovec iov[2];
      int k = 0;
      if (sent < head_len) iov[k++] = (struct iovec){(void *)(head + sent), head_len - sent};
      size_t boff = sent > head_len ? sent - head_len : 0;
      if (boff < body_len) iov[k++] = (struct iovec){(void *)(body + boff), body_len - boff};
      struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)k};
      ssize_t w = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) sent = total; /* the peer went: read what it said */
      else if (w > 0) sent += (size_t)w;
      if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) continue;
    }
    ssize_t n = recv(fd, rb + rlen, sizeof rb - rlen, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      n = 0;
    }
    if (n == 0) eof = 1;
    rlen += (size_t)n;
    size_t off = 0;
    while (!have_head) {
      unsigned char *end = memmem(rb + off, rlen - off, "\r\n\r\n", 4);
      if (!end) break;
      size_t hl = (size_t)(end - (rb + off)) + 4;
      char v[128];
      rb[off + hl - 1] = 0;
      const char *h = (const char *)rb + off;
      r.status = atoi(h + 9);
      if (r.status >= 100 && r.status < 200) {
        off += hl;
        continue;
      }
      have_head = 1;
      r.chunked = header_value(h, hl - 1, "transfer-encoding", v, sizeof v) && strcasestr(v, "chunked");
      r.has_length = header_value(h, hl - 1, "content-length", v, sizeof v);
      left = r.has_length ? strtoull(v, NULL, 10) : UINT64_MAX;
      off += hl;
    }
    if (have_head) {
      size_t avail = rlen - off;
      if (r.chunked) {
        long used = dechunk_feed(&dc, rb + off, avail, buf_sink, into);
        if (used < 0) {
          r.error = "bad chunked body or body longer than expected";
          break;
        }
        done = dc.state == CK_DONE;
      } else {
        size_t take = avail < left ? avail : (size_t)left;
        if (buf_sink(into, rb + off, take) < 0) {
          r.error = "body longer than expected";
          break;
        }
        left -= take;
        done = left == 0 || (eof && !r.has_length);
      }
      rlen = 0;
    } else if (off > 0) {
      memmove(rb, rb + off, rlen - off);
      rlen -= off;
    } else if (rlen == sizeof rb) {
      r.error = "response head too long";
      break;
    }
    if (eof && !done) {
      if (!r.error) r.error = have_head ? "connection closed inside the response body" : "connection closed without a response";
      break;
    }
  }
  if (!r.error && sent < total) r.error = "the server answered before the whole body was sent";
  close(fd);
  return r;
}

static void json_error(const char *mode, const char *error, int status) {
  if (status) printf("{\"mode\":\"%s\",\"error\":\"%s (HTTP %d)\"}\n", mode, error, status);
  else printf("{\"mode\":\"%s\",\"error\":\"%s\"}\n", mode, error);
}

static int client(int up, int p, size_t n, const char *host) {
  const char *mode = up ? "up" : "down";
  char head[512], expected[65], got[65];
  unsigned char *data = pattern(up ? SEED_UP : SEED_DOWN, n);
  hex_of(data, n, expected);
  struct buf into = {0};
  char id[32];
  snprintf(id, sizeof id, "%ld%d", (long)time(NULL), getpid());
  if (up) {
    snprintf(head, sizeof head,
             "POST /upload?id=%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
             "Content-Length: %zu\r\n\r\n",
             id, host, n);
    into.cap = 4096;
    into.p = malloc(into.cap);
  } else {
    free(data);
    data = NULL;
    snprintf(head, sizeof head, "GET /download?n=%zu HTTP/1.1\r\nHost: %s\r\n\r\n", n, host);
    into.cap = n;
    into.p = malloc(n + 1);
    if (!into.p) die("malloc");
    memset(into.p, 0, n); /* pages touched before the clock starts */
  }
  printf("ready\n");
  fflush(stdout);
  char go[16];
  if (read(0, go, sizeof go) <= 0) return 1;
  double cpu0 = cpu_seconds(), t0 = now();
  struct response r = exchange(p, head, data, up ? n : 0, &into);
  double seconds = now() - t0, cpu = cpu_seconds() - cpu0;
  if (r.error || r.status != 200) {
    json_error(mode, r.error ? r.error : "the server answered with another status than 200", r.status);
    return 0;
  }
  printf("{\"phase\":\"timed\",\"seconds\":%.6f,\"cpu\":%.4f}\n", seconds, cpu);
  fflush(stdout);
  int ok;
  if (up) {
    into.p[into.len < into.cap ? into.len : into.cap - 1] = 0;
    if ((size_t)strtoull((char *)into.p, NULL, 10) != n) {
      json_error(mode, "the server counted a different byte count", r.status);
      return 0;
    }
    struct buf hb = {.p = (unsigned char *)got, .cap = 64};
    snprintf(head, sizeof head, "GET /hash?id=%s HTTP/1.1\r\nHost: %s\r\n\r\n", id, host);
    struct response hr = exchange(p, head, NULL, 0, &hb);
    got[hb.len] = 0;
    if (hr.error || hr.status != 200) {
      json_error(mode, "GET /hash failed", hr.status);
      return 0;
    }
  } else {
    if (into.len != n) {
      json_error(mode, "short body", r.status);
      return 0;
    }
    hex_of(into.p, n, got);
  }
  ok = strcmp(got, expected) == 0;
  printf(
      "{\"mode\":\"%s\",\"bytes\":%zu,\"seconds\":%.6f,\"gbps\":%.4f,\"cpu\":%.4f,\"status\":%d,"
      "\"contentLength\":%s,\"chunked\":%s,\"sha256\":\"%s\",\"ok\":%s,\"errors\":%d}\n",
      mode, n, seconds, (double)n * 8 / seconds / 1e9, cpu, r.status, r.has_length ? "true" : "false",
      r.chunked ? "true" : "false", got, ok ? "true" : "false", ok ? 0 : 1);
  return 0;
}

int main(int argc, char **argv) {
  const char *limit = getenv("BENCH_TIMEOUT");
  alarm(limit ? (unsigned)atoi(limit) : 120);
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (argc == 4 && strcmp(argv[1], "serve") == 0) {
    int threads = atoi(argv[2]);
    if (threads < 1 || threads > MAX_THREADS) threads = 1;
    alarm(0);
    return serve(threads, (size_t)strtoull(argv[3], NULL, 10));
  }
  if (argc == 5 && (strcmp(argv[1], "up") == 0 || strcmp(argv[1], "down") == 0))
    return client(strcmp(argv[1], "up") == 0, atoi(argv[2]), (size_t)strtoull(argv[3], NULL, 10), argv[4]);
  fprintf(stderr, "usage: httpbench serve THREADS MAXBYTES | httpbench up|down PORT BYTES HOST\n");
  return 2;
}
