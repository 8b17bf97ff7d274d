/*
 * The benchmark's load generator: drives bench/native/service.c on 127.0.0.1:PORT, directly or through a
 * tunnel, and prints one JSON line with the figures and its own CPU time (to tell when a figure is
 * generator-bound). Every mode is bounded: env BENCH_TIMEOUT seconds (default 300) ends it by SIGALRM.
 *
 *   loadgen up        PORT BYTES CONNS        visitor -> service bulk ('s' sink), CONNS threads at once
 *   loadgen down      PORT BYTES CONNS        service -> visitor bulk ('r' source)
 *   loadgen latency   PORT ROUNDS WARMUP SIZE ping-pong on one connection ('e' echo)
 *   loadgen connrate  PORT COUNT INFLIGHT     connect + 64-byte echo + close, INFLIGHT at once (epoll)
 *   loadgen hold      PORT COUNT INFLIGHT     open COUNT echo-verified connections, print, wait for a line
 *                                             on stdin, check none was dropped, close them all, print
 *   loadgen integrity PORT CONNS BYTES        random bytes echoed with half-close; sha256 both ways
 *   loadgen ramp      PORT SVCPORT DIR CONNS SECONDS
 *                                             long path: this process is also the service, listening on
 *                                             SVCPORT; CONNS visitors through PORT move bytes one way
 *                                             (DIR up: visitor -> service, down: service -> visitor) for
 *                                             SECONDS; bytes are counted where they arrive, per 100 ms
 *   loadgen ttfb      PORT SVCPORT COUNT      COUNT fresh connections, one after another: time from
 *                                             connect() to the first byte the service sends on accept
 *
 * BYTES is the total over all connections for up/down.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sha256.h"

#define CHUNK (256 * 1024)
#define HEADER 16
#define MAX_CONNS 64

static int port;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }

/* CPU seconds (user + system) of the whole process, or of the calling thread. */
static double cpu_seconds(int who) {
  struct rusage ru;
  getrusage(who, &ru);
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

static void fail(const char *what) {
  printf("{\"error\":\"%s: %s\"}\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static int dial(int nonblock) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

static int write_all(int fd, const void *buf, size_t n) {
  const unsigned char *p = buf;
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_exact(int fd, void *buf, size_t n) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static void header(unsigned char h[HEADER], char mode, uint64_t length) {
  memset(h, 0, HEADER);
  memcpy(h, "BNC", 3);
  h[3] = (unsigned char)mode;
  for (int i = 0; i < 8; i++) h[8 + i] = (unsigned char)(length >> (8 * i));
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static void fill_random(unsigned char *buf, size_t n, uint64_t *state) {
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = splitmix(state);
    memcpy(buf + i, &v, 8);
  }
}

/* ---------- bulk: up / down ---------- */

struct bulk {
  pthread_t tid;
  int up;
  uint64_t bytes, moved;
  int error;
  double end, cpu;
};

static pthread_barrier_t start_line;

static void *bulk_worker(void *arg) {
  struct bulk *b = arg;
  unsigned char *buf = malloc(CHUNK);
  uint64_t seed = (uint64_t)(uintptr_t)b;
  fill_random(buf, CHUNK, &seed);
  int fd = dial(0);
  pthread_barrier_wait(&start_line);
  if (fd < 0) {
    b->error = 1;
    goto out;
  }
  unsigned char h[HEADER];
  header(h, b->up ? 's' : 'r', b->bytes);
  if (write_all(fd, h, HEADER) < 0) b->error = 1;
  if (b->up) {
    for (uint64_t left = b->bytes; left > 0 && !b->error;) {
      size_t n = left < CHUNK ? (size_t)left : CHUNK;
      if (write_all(fd, buf, n) < 0) b->error = 1;
      left -= n;
    }
    shutdown(fd, SHUT_WR);
    unsigned char answer[8];
    if (!b->error && read_exact(fd, answer, 8) == 0) {
      for (int i = 0; i < 8; i++) b->moved |= (uint64_t)answer[i] << (8 * i);
    }
  } else {
    for (;;) {
      ssize_t r = read(fd, buf, CHUNK);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) b->error = 1;
      if (r <= 0) break;
      b->moved += (uint64_t)r;
    }
  }
  if (b->moved != b->bytes) b->error = 1;
  close(fd);
out:
  b->end = now();
  b->cpu = cpu_seconds(RUSAGE_THREAD);
  free(buf);
  return NULL;
}

static void run_bulk(int up, uint64_t bytes, int conns) {
  struct bulk workers[MAX_CONNS];
  memset(workers, 0, sizeof workers);
  pthread_barrier_init(&start_line, NULL, (unsigned)conns + 1);
  for (int i = 0; i < conns; i++) {
    workers[i].up = up;
    workers[i].bytes = bytes / (uint64_t)conns;
    pthread_create(&workers[i].tid, NULL, bulk_worker, &workers[i]);
  }
  pthread_barrier_wait(&start_line);
  double t0 = now(), end = t0, cpu_max = 0;
  uint64_t moved = 0;
  int errors = 0;
  for (int i = 0; i < conns; i++) {
    pthread_join(workers[i].tid, NULL);
    if (workers[i].end > end) end = workers[i].end;
    if (workers[i].cpu > cpu_max) cpu_max = workers[i].cpu;
    moved += workers[i].moved;
    errors += workers[i].error;
  }
  double s = end - t0;
  printf("{\"mode\":\"%s\",\"conns\":%d,\"bytes\":%llu,\"seconds\":%.6f,\"gbps\":%.4f,\"errors\":%d,"
         "\"cpu\":%.3f,\"cpuThreadMax\":%.3f}\n",
         up ? "up" : "down", conns, (unsigned long long)moved, s, (double)moved * 8 / s / 1e9, errors,
         cpu_seconds(RUSAGE_SELF), cpu_max);
}

/* ---------- latency ---------- */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *sorted, int n, double p) {
  int i = (int)(p * (n - 1) + 0.5);
  return sorted[i < 0 ? 0 : i >= n ? n - 1 : i];
}

static void run_latency(int rounds, int warmup, int size) {
  if (size < 1 || size > 65536 || rounds < 1) {
    errno = EINVAL;
    fail("latency arguments");
  }
  int fd = dial(0);
  if (fd < 0) fail("connect");
  unsigned char h[HEADER], *out = malloc((size_t)size), *in = malloc((size_t)size);
  header(h, 'e', 0);
  if (write_all(fd, h, HEADER) < 0) fail("write header");
  double *samples = malloc(sizeof(double) * (size_t)rounds);
  int errors = 0;
  double t_start = now();
  for (int i = 0; i < warmup + rounds; i++) {
    memset(out, (unsigned char)i, (size_t)size);
    double t0 = now();
    if (write_all(fd, out, (size_t)size) < 0 || read_exact(fd, in, (size_t)size) < 0) fail("ping-pong");
    double dt = now() - t0;
    if (memcmp(in, out, (size_t)size) != 0) errors++;
    if (i >= warmup) samples[i - warmup] = dt * 1e6;
  }
  double wall = now() - t_start;
  close(fd);
  double sum = 0;
  for (int i = 0; i < rounds; i++) sum += samples[i];
  qsort(samples, (size_t)rounds, sizeof(double), cmp_double);
  printf("{\"mode\":\"latency\",\"rounds\":%d,\"size\":%d,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,"
         "\"p999\":%.2f,\"max\":%.2f,\"mean\":%.2f,\"errors\":%d,\"seconds\":%.4f,\"cpu\":%.3f,"
         "\"cpuThreadMax\":%.3f}\n",
         rounds, size, pct(samples, rounds, 0.5), pct(samples, rounds, 0.9), pct(samples, rounds, 0.99),
         pct(samples, rounds, 0.999), samples[rounds - 1], sum / rounds, errors, wall,
         cpu_seconds(RUSAGE_SELF), cpu_seconds(RUSAGE_SELF));
}

/* ---------- connrate / hold: epoll, INFLIGHT connections at once ---------- */

#define MSG 64

struct slot {
  int fd, idx, got, wrote;
  double t0;
  unsigned char buf[MSG];
};

static void expected(int idx, unsigned char *msg) {
  for (int i = 0; i < MSG; i++) msg[i] = (unsigned char)(idx * 31 + i);
}

static int start_conn(int ep, struct slot *s, int idx) {
  s->idx = idx;
  s->got = 0;
  s->wrote = 0;
  s->t0 = now();
  s->fd = dial(1);
  if (s->fd < 0) return -1;
  struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
  epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
  return 0;
}

static void run_conns(int hold, int count, int inflight) {
  if (inflight < 1 || inflight > 1024 || count < 1) {
    errno = EINVAL;
    fail("connection arguments");
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct slot *slots = calloc((size_t)inflight, sizeof *slots);
  int *held = calloc((size_t)count, sizeof(int));
  double *lat = calloc((size_t)count, sizeof(double));
  int next = 0, done = 0, ok = 0, errors = 0, active = 0, nheld = 0;
  double t_start = now();
  for (int i = 0; i < inflight; i++) {
    while (next < count) {
      if (start_conn(ep, &slots[i], next++) == 0) {
        active++;
        break;
      }
      errors++;
      done++;
    }
  }
  struct epoll_event events[256];
  while (active > 0) {
    int n = epoll_wait(ep, events, 256, 1000);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail("epoll_wait");
    for (int i = 0; i < n; i++) {
      struct slot *s = events[i].data.ptr;
      int finished = 0, good = 0;
      if (!s->wrote) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        unsigned char msg[HEADER + MSG];
        header(msg, 'e', 0);
        expected(s->idx, msg + HEADER);
        if (err != 0 || write(s->fd, msg, sizeof msg) != (ssize_t)sizeof msg) finished = 1;
        else {
          s->wrote = 1;
          struct epoll_event ev = {.events = EPOLLIN, .data.ptr = s};
          epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
        }
      } else {
        ssize_t r = read(s->fd, s->buf + s->got, (size_t)(MSG - s->got));
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) finished = 1;
        else {
          s->got += (int)r;
          if (s->got == MSG) {
            unsigned char want[MSG];
            expected(s->idx, want);
            finished = 1;
            good = memcmp(want, s->buf, MSG) == 0;
          }
        }
      }
      if (!finished) continue;
      epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
      if (good && hold) held[nheld++] = s->fd;
      else close(s->fd);
      if (good) lat[ok++] = (now() - s->t0) * 1e6;
      else errors++;
      done++;
      active--;
      while (next < count) {
        if (start_conn(ep, s, next++) == 0) {
          active++;
          break;
        }
        errors++;
        done++;
      }
    }
  }
  double wall = now() - t_start;
  qsort(lat, (size_t)(ok > 0 ? ok : 1), sizeof(double), cmp_double);
  printf("{\"mode\":\"%s\",\"count\":%d,\"ok\":%d,\"errors\":%d,\"seconds\":%.4f,\"rate\":%.1f,"
         "\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f,\"cpu\":%.3f,\"cpuThreadMax\":%.3f}\n",
         hold ? "hold" : "connrate", count, ok, errors, wall, ok / wall, ok ? pct(lat, ok, 0.5) : 0,
         ok ? pct(lat, ok, 0.99) : 0, ok ? lat[ok - 1] : 0, cpu_seconds(RUSAGE_SELF), cpu_seconds(RUSAGE_SELF));
  fflush(stdout);
  if (!hold) return;
  char line[16];
  (void)!read(0, line, sizeof line); /* a line, or EOF: release */
  int dropped = 0;
  for (int i = 0; i < nheld; i++) {
    char c;
    ssize_t r = recv(held[i], &c, 1, MSG_DONTWAIT | MSG_PEEK);
    if (r == 0 || (r < 0 && errno != EAGAIN)) dropped++;
    close(held[i]);
  }
  printf("{\"mode\":\"released\",\"held\":%d,\"dropped\":%d}\n", nheld, dropped);
}

/* ---------- integrity: random bytes echoed with half-close, sha256 on both sides ---------- */

struct check {
  pthread_t sender, receiver;
  int fd, error;
  uint64_t bytes, received;
  uint64_t seed;
  unsigned char sent_hash[32], recv_hash[32];
};

static void *integrity_send(void *arg) {
  struct check *c = arg;
  unsigned char *buf = malloc(CHUNK), h[HEADER];
  sha256_ctx ctx;
  sha256_init(&ctx);
  header(h, 'e', 0);
  if (write_all(c->fd, h, HEADER) < 0) c->error = 1;
  uint64_t state = c->seed;
  for (uint64_t left = c->bytes; left > 0 && !c->error;) {
    size_t n = left < CHUNK ? (size_t)left : CHUNK;
    fill_random(buf, CHUNK, &state);
    sha256_update(&ctx, buf, n);
    if (write_all(c->fd, buf, n) < 0) c->error = 1;
    left -= n;
  }
  shutdown(c->fd, SHUT_WR);
  sha256_final(&ctx, c->sent_hash);
  free(buf);
  return NULL;
}

static void *integrity_recv(void *arg) {
  struct check *c = arg;
  unsigned char *buf = malloc(CHUNK);
  sha256_ctx ctx;
  sha256_init(&ctx);
  for (;;) {
    ssize_t r = read(c->fd, buf, CHUNK);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) c->error = 1;
    if (r <= 0) break;
    sha256_update(&ctx, buf, (size_t)r);
    c->received += (uint64_t)r;
  }
  sha256_final(&ctx, c->recv_hash);
  free(buf);
  return NULL;
}

static void run_integrity(int conns, uint64_t bytes) {
  struct check checks[MAX_CONNS];
  memset(checks, 0, sizeof checks);
  uint64_t seed;
  if (getrandom(&seed, sizeof seed, 0) != sizeof seed) seed = (uint64_t)now();
  double t0 = now();
  for (int i = 0; i < conns; i++) {
    checks[i].bytes = bytes;
    checks[i].seed = seed + (uint64_t)i * 0x1000193ull;
    checks[i].fd = dial(0);
    if (checks[i].fd < 0) fail("connect");
    pthread_create(&checks[i].sender, NULL, integrity_send, &checks[i]);
    pthread_create(&checks[i].receiver, NULL, integrity_recv, &checks[i]);
  }
  int ok = 0;
  char first[65] = "", bad[MAX_CONNS * 80] = "";
  for (int i = 0; i < conns; i++) {
    pthread_join(checks[i].sender, NULL);
    pthread_join(checks[i].receiver, NULL);
    close(checks[i].fd);
    int match = !checks[i].error && checks[i].received == bytes &&
                memcmp(checks[i].sent_hash, checks[i].recv_hash, 32) == 0;
    char hex[65];
    sha256_hex(checks[i].recv_hash, hex);
    if (i == 0) memcpy(first, hex, 65);
    if (match) ok++;
    else
      snprintf(bad + strlen(bad), sizeof bad - strlen(bad), "%s{\"conn\":%d,\"received\":%llu,\"sha256\":\"%s\"}",
               bad[0] ? "," : "", i, (unsigned long long)checks[i].received, hex);
  }
  printf("{\"mode\":\"integrity\",\"conns\":%d,\"ok\":%d,\"bytes\":%llu,\"seconds\":%.4f,\"sha256First\":\"%s\","
         "\"mismatches\":[%s],\"cpu\":%.3f,\"cpuThreadMax\":%.3f}\n",
         conns, ok, (unsigned long long)bytes, now() - t0, first, bad, cpu_seconds(RUSAGE_SELF),
         cpu_seconds(RUSAGE_SELF));
}

/* ---------- long path: ramp (throughput over time) and ttfb ---------- */

#define BUCKET 0.1
#define MAX_BUCKETS 1200

static double ramp_t0, ramp_end;
static uint64_t buckets[MAX_BUCKETS];
static int listen_fd;

static int listen_on(int p) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  if (fd < 0) return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(p)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 256) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Blocking calls wake up at least every 100 ms, so that every thread sees the end of the run. */
static void short_timeouts(int fd) {
  struct timeval t = {.tv_sec = 0, .tv_usec = 100000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &t, sizeof t);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &t, sizeof t);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct ramp_end {
  pthread_t tid;
  int fd, sender, error;
};

static void *ramp_worker(void *arg) {
  struct ramp_end *e = arg;
  unsigned char *buf = malloc(CHUNK);
  uint64_t seed = (uint64_t)(uintptr_t)e;
  fill_random(buf, CHUNK, &seed);
  short_timeouts(e->fd);
  while (now() < ramp_end) {
    ssize_t n = e->sender ? write(e->fd, buf, CHUNK) : read(e->fd, buf, CHUNK);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) {
      e->error = 1;
      break;
    }
    if (!e->sender) {
      int b = (int)((now() - ramp_t0) / BUCKET);
      if (b >= 0 && b < MAX_BUCKETS) __atomic_fetch_add(&buckets[b], (uint64_t)n, __ATOMIC_RELAXED);
    }
  }
  free(buf);
  return NULL;
}

static void run_ramp(int svcport, int up, int conns, double seconds) {
  listen_fd = listen_on(svcport);
  if (listen_fd < 0) fail("listen");
  struct ramp_end visitors[MAX_CONNS], services[MAX_CONNS];
  memset(visitors, 0, sizeof visitors);
  memset(services, 0, sizeof services);
  if (seconds * 10 > MAX_BUCKETS) seconds = MAX_BUCKETS / 10.0;
  ramp_t0 = now();
  ramp_end = ramp_t0 + seconds;
  for (int i = 0; i < conns; i++) {
    visitors[i].fd = dial(0);
    if (visitors[i].fd < 0) fail("connect");
    services[i].fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (services[i].fd < 0) fail("accept");
    visitors[i].sender = up;
    services[i].sender = !up;
  }
  // The clock starts once every connection is through: the ramp measures flow control, not connects.
  ramp_t0 = now();
  ramp_end = ramp_t0 + seconds;
  for (int i = 0; i < conns; i++) {
    pthread_create(&visitors[i].tid, NULL, ramp_worker, &visitors[i]);
    pthread_create(&services[i].tid, NULL, ramp_worker, &services[i]);
  }
  int errors = 0;
  for (int i = 0; i < conns; i++) {
    pthread_join(visitors[i].tid, NULL);
    pthread_join(services[i].tid, NULL);
    errors += visitors[i].error + services[i].error;
    close(visitors[i].fd);
    close(services[i].fd);
  }
  int n = (int)(seconds / BUCKET + 0.5);
  uint64_t total = 0;
  printf("{\"mode\":\"ramp\",\"dir\":\"%s\",\"conns\":%d,\"seconds\":%.3f,\"bucketMs\":%d,\"errors\":%d,\"mbps\":[",
         up ? "up" : "down", conns, seconds, (int)(BUCKET * 1000), errors);
  for (int i = 0; i < n; i++) {
    total += buckets[i];
    printf("%s%.1f", i ? "," : "", (double)buckets[i] * 8 / BUCKET / 1e6);
  }
  printf("],\"bytes\":%llu,\"cpu\":%.3f}\n", (unsigned long long)total, cpu_seconds(RUSAGE_SELF));
}

static void *ttfb_service(void *arg) {
  (void)arg;
  for (;;) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      return NULL;
    }
    // The visitor sends nothing: closing at once after the byte is a clean FIN, and the next accept
    // is not held up by this connection's end crossing the path.
    unsigned char hello = 'h';
    if (write(fd, &hello, 1) != 1) {}
    close(fd);
  }
}

static void run_ttfb(int svcport, int count) {
  listen_fd = listen_on(svcport);
  if (listen_fd < 0) fail("listen");
  pthread_t tid;
  pthread_create(&tid, NULL, ttfb_service, NULL);
  double *ms = calloc((size_t)count, sizeof *ms);
  int errors = 0, ok = 0;
  for (int i = 0; i < count; i++) {
    double t0 = now();
    int fd = dial(0);
    unsigned char b;
    if (fd < 0 || read(fd, &b, 1) != 1) errors++;
    else ms[ok++] = (now() - t0) * 1000;
    if (fd >= 0) close(fd);
  }
  qsort(ms, (size_t)ok, sizeof *ms, cmp_double);
  printf("{\"mode\":\"ttfb\",\"count\":%d,\"errors\":%d,\"p50\":%.2f,\"min\":%.2f,\"max\":%.2f,\"cpu\":%.3f}\n",
         count, errors, ok ? pct(ms, ok, 0.5) : 0, ok ? ms[0] : 0, ok ? ms[ok - 1] : 0, cpu_seconds(RUSAGE_SELF));
  free(ms);
}

static long arg(char **argv, int argc, int i) {
  if (i >= argc) {
    fprintf(stderr, "loadgen: missing argument %d (see the header of bench/native/loadgen.c)\n", i);
    exit(2);
  }
  return atol(argv[i]);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  const char *limit = getenv("BENCH_TIMEOUT");
  alarm(limit ? (unsigned)atoi(limit) : 300);
  if (argc < 3) {
    fprintf(stderr, "usage: loadgen MODE PORT ARGS... (see bench/native/loadgen.c)\n");
    return 2;
  }
  const char *mode = argv[1];
  port = (int)arg(argv, argc, 2);
  if (!strcmp(mode, "up") || !strcmp(mode, "down")) {
    long conns = arg(argv, argc, 4);
    if (conns < 1 || conns > MAX_CONNS) conns = 1;
    run_bulk(!strcmp(mode, "up"), (uint64_t)arg(argv, argc, 3), (int)conns);
  } else if (!strcmp(mode, "latency"))
    run_latency((int)arg(argv, argc, 3), (int)arg(argv, argc, 4), (int)arg(argv, argc, 5));
  else if (!strcmp(mode, "connrate") || !strcmp(mode, "hold"))
    run_conns(!strcmp(mode, "hold"), (int)arg(argv, argc, 3), (int)arg(argv, argc, 4));
  else if (!strcmp(mode, "integrity")) {
    long conns = arg(argv, argc, 3);
    if (conns < 1 || conns > MAX_CONNS) conns = 16;
    run_integrity((int)conns, (uint64_t)arg(argv, argc, 4));
  } else if (!strcmp(mode, "ramp")) {
    if (argc < 7) {
      fprintf(stderr, "usage: loadgen ramp PORT SVCPORT up|down CONNS SECONDS\n");
      return 2;
    }
    long conns = arg(argv, argc, 5);
    if (conns < 1 || conns > MAX_CONNS) conns = 1;
    run_ramp((int)arg(argv, argc, 3), !strcmp(argv[4], "up"), (int)conns, atof(argv[6]));
  } else if (!strcmp(mode, "ttfb"))
    run_ttfb((int)arg(argv, argc, 3), (int)arg(argv, argc, 4));
  else {
    fprintf(stderr, "loadgen: unknown mode '%s'\n", mode);
    return 2;
  }
  fflush(stdout);
  return 0;
}
