/*
 * The floor reference: a minimal TCP relay, for the `relay-floor` provider. Two of them chained
 * (visitor → relay → relay → service) carry each byte over three loopback TCP connections, as a tunnel
 * does, with the least user-space work a relay can do: one epoll loop per process (as a Bun role has
 * one event loop), one read and one write per chunk from a single reused 256 KiB buffer, no framing, no
 * multiplexing, no acknowledgements kept for a resume. What it reaches is what the machine allows three
 * hops; the gap between it and a tunnel is the tunnel's own user-space work.
 *
 * Unlike a tunnel it opens a TCP connection to the next hop per visitor (three connections set up and
 * torn down per visitor, a tunnel two), so its connection rate is not a floor for a tunnel's.
 *
 * Backpressure: when the peer's socket takes less than a read, the rest waits in that direction's
 * pending buffer and the source is not read again until it is written. FIN is passed on with
 * shutdown(SHUT_WR) once everything before it was written; the pair closes when both directions ended.
 *
 * Usage: relay TARGET_PORT. Listens on 127.0.0.1:0, prints "port N" once listening, forwards each
 * connection to 127.0.0.1:TARGET_PORT, and exits when stdin closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (256 * 1024)

/* One side of a relayed pair. `pend` holds what was read from the peer but not yet written to us. */
struct end {
  int fd;
  struct end *peer;
  unsigned char *pend;
  size_t pend_off, pend_len;
  int connecting; /* our outgoing connect has not completed yet */
  int rd_eof;     /* our fd reported EOF */
  int wr_shut;    /* we shut our fd's write side */
  int dead;
};

static unsigned char buf[CHUNK];
static int ep, target_port;

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* What epoll should report for `e`: reads unless the peer is backed up, writes while bytes wait. */
static void arm(struct end *e, int op) {
  if (e->rd_eof && e->wr_shut) {
    /* Both directions of this socket are done: epoll would report EPOLLHUP on every wait until the
     * other socket of the pair is done too, so stop watching it. */
    epoll_ctl(ep, EPOLL_CTL_DEL, e->fd, NULL);
    return;
  }
  uint32_t events = 0;
  if (e->connecting || e->pend_len) events |= EPOLLOUT;
  if (!e->connecting && !e->rd_eof && !e->peer->connecting && !e->peer->pend_len) events |= EPOLLIN;
  struct epoll_event ev = {.events = events, .data.ptr = e};
  epoll_ctl(ep, op, e->fd, &ev);
}

static void close_pair(struct end *e) {
  struct end *p = e->peer;
  close(e->fd);
  close(p->fd);
  free(e->pend);
  free(p->pend);
  /* Events for the pair may still be queued in this epoll_wait batch: mark, free after the batch. */
  e->dead = p->dead = 1;
}

static void maybe_close(struct end *e) {
  struct end *p = e->peer;
  if (e->rd_eof && p->rd_eof && e->wr_shut && p->wr_shut) close_pair(e);
}

/* Pass on the FIN that `from` read, once `to` has nothing pending. */
static void pass_eof(struct end *from) {
  struct end *to = from->peer;
  if (from->rd_eof && !to->pend_len && !to->wr_shut) {
    shutdown(to->fd, SHUT_WR);
    to->wr_shut = 1;
  }
}

/* Writes what is pending for `e`; returns -1 on a write error. */
static int flush(struct end *e) {
  while (e->pend_len) {
    ssize_t n = write(e->fd, e->pend + e->pend_off, e->pend_len);
    if (n < 0) return errno == EAGAIN ? 0 : -1;
    e->pend_off += (size_t)n;
    e->pend_len -= (size_t)n;
  }
  return 0;
}

static void on_readable(struct end *e) {
  struct end *to = e->peer;
  if (to->connecting || to->pend_len) return; /* an error or hang-up before the peer can take bytes */
  ssize_t n = read(e->fd, buf, CHUNK);
  if (n == 0) {
    e->rd_eof = 1;
    pass_eof(e);
    arm(e, EPOLL_CTL_MOD);
    maybe_close(e);
    return;
  }
  if (n < 0) {
    if (errno != EAGAIN) close_pair(e);
    return;
  }
  ssize_t w = write(to->fd, buf, (size_t)n);
  if (w < 0 && errno != EAGAIN) {
    close_pair(e);
    return;
  }
  if (w < n) {
    size_t done = w > 0 ? (size_t)w : 0;
    if (!to->pend) to->pend = malloc(CHUNK);
    if (!to->pend) die("malloc");
    memcpy(to->pend, buf + done, (size_t)n - done);
    to->pend_off = 0;
    to->pend_len = (size_t)n - done;
    arm(e, EPOLL_CTL_MOD);
    arm(to, EPOLL_CTL_MOD);
  }
}

static void on_writable(struct end *e) {
  if (e->connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      close_pair(e);
      return;
    }
    e->connecting = 0;
    arm(e, EPOLL_CTL_MOD);
    arm(e->peer, EPOLL_CTL_MOD);
    return;
  }
  if (flush(e) < 0) {
    close_pair(e);
    return;
  }
  if (e->pend_len) return;
  pass_eof(e->peer);
  arm(e, EPOLL_CTL_MOD);
  arm(e->peer, EPOLL_CTL_MOD);
  maybe_close(e);
}

static void on_accept(int listener) {
  for (;;) {
    int a = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (a < 0) return;
    int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (b < 0) {
      close(a);
      return;
    }
    int one = 1;
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(target_port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct end *va = calloc(2, sizeof *va);
    if (!va) die("calloc");
    struct end *vb = va + 1;
    va->fd = a;
    vb->fd = b;
    va->peer = vb;
    vb->peer = va;
    if (connect(b, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS) {
      close(a);
      close(b);
      free(va);
      continue;
    }
    vb->connecting = 1;
    arm(va, EPOLL_CTL_ADD);
    arm(vb, EPOLL_CTL_ADD);
  }
}

static void *watch_stdin(void *arg) {
  (void)arg;
  char c;
  while (read(0, &c, 1) > 0) {
  }
  exit(0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: relay TARGET_PORT\n");
    return 2;
  }
  target_port = atoi(argv[1]);
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listener < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(listener, 4096) < 0) die("listen");
  if (getsockname(listener, (struct sockaddr *)&addr, &len) < 0) die("getsockname");
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, listener, &lev);
  pthread_t tid;
  pthread_create(&tid, NULL, watch_stdin, NULL);
  printf("port %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  struct epoll_event events[256];
  struct end *dead[512];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    int ndead = 0;
    for (int i = 0; i < n; i++) {
      struct end *e = events[i].data.ptr;
      if (!e) {
        on_accept(listener);
        continue;
      }
      if (e->dead) continue;
      uint32_t ev = events[i].events;
      if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_writable(e);
      if (!e->dead && ((ev & EPOLLIN) || ((ev & (EPOLLHUP | EPOLLERR)) && !e->rd_eof))) on_readable(e);
      if (e->dead) {
        /* Free each pair once, after the batch; the lower address of the two owns the allocation. */
        struct end *owner = e < e->peer ? e : e->peer;
        int seen = 0;
        for (int j = 0; j < ndead; j++) seen |= dead[j] == owner;
        if (!seen && ndead < 512) dead[ndead++] = owner;
      }
    }
    for (int j = 0; j < ndead; j++) free(dead[j]);
  }
}
