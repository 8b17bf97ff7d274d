/*
 * The local service the benchmark publishes: an epoll server on 127.0.0.1, one event loop per thread
 * (SO_REUSEPORT spreads connections), so that it is never what a figure measures.
 *
 * Every connection starts with a 16-byte header: "BNC" + mode, 4 bytes unused, u64 little-endian length.
 *   'e' echo:   echo every byte; on EOF, half-close (after the last byte is written), then close.
 *   's' sink:   read until EOF, then answer the byte count (u64 LE) and close.
 *   'r' source: send `length` bytes, half-close, read until EOF, close.
 * A connection whose first bytes are not a header (e.g. a port probe) is closed.
 *
 * Usage: service [THREADS]. Prints "port N" on stdout once listening; exits when stdin closes, so that
 * it never outlives the benchmark.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEADER 16
#define CHUNK (256 * 1024)
#define MAX_THREADS 8

enum state { READ_HEADER, ECHO, SINK, SOURCE, DRAIN };

struct conn {
  int fd;
  enum state state;
  int hdr_len;
  unsigned char hdr[HEADER];
  uint64_t count;     /* sink: bytes received; source: bytes still to send */
  unsigned char *pend; /* echo: bytes read but not yet written */
  size_t pend_off, pend_len;
  int rd_eof;
};

static unsigned char source_buf[CHUNK];
static int port;

static void die(const char *what) {
  perror(what);
  exit(1);
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

static void set_events(int ep, struct conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void finish(int ep, struct conn *c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->pend);
  free(c);
}

/* Echo bytes just read: write what the kernel takes, keep the rest and wait for EPOLLOUT. */
static void echo_bytes(int ep, struct conn *c, const unsigned char *data, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = write(c->fd, data + off, n - off);
    if (w > 0) {
      off += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    break;
  }
  if (off < n) {
    c->pend = malloc(n - off);
    memcpy(c->pend, data + off, n - off);
    c->pend_off = 0;
    c->pend_len = n - off;
    set_events(ep, c, EPOLLOUT);
  }
}

/* Returns 0 when the connection is finished (closed). */
static int on_readable(int ep, struct conn *c, unsigned char *scratch) {
  for (int rounds = 0; rounds < 16; rounds++) {
    ssize_t n = read(c->fd, scratch, CHUNK);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 1;
      finish(ep, c);
      return 0;
    }
    if (n == 0) {
      c->rd_eof = 1;
      if (c->state == READ_HEADER || c->state == DRAIN || c->state == SOURCE) {
        finish(ep, c);
        return 0;
      }
      if (c->state == SINK) {
        unsigned char answer[8];
        for (int i = 0; i < 8; i++) answer[i] = (unsigned char)(c->count >> (8 * i));
        if (write(c->fd, answer, 8) != 8) perror("sink answer");
        finish(ep, c);
        return 0;
      }
      /* ECHO: nothing pending (EPOLLIN is only armed then): half-close and go. */
      shutdown(c->fd, SHUT_WR);
      finish(ep, c);
      return 0;
    }
    unsigned char *data = scratch;
    size_t len = (size_t)n;
    if (c->state == READ_HEADER) {
      size_t room = (size_t)(HEADER - c->hdr_len);
      size_t take = room < len ? room : len;
      memcpy(c->hdr + c->hdr_len, data, take);
      c->hdr_len += (int)take;
      data += take;
      len -= take;
      if (c->hdr_len < HEADER) continue;
      if (memcmp(c->hdr, "BNC", 3) != 0) {
        finish(ep, c);
        return 0;
      }
      uint64_t length = 0;
      for (int i = 0; i < 8; i++) length |= (uint64_t)c->hdr[8 + i] << (8 * i);
      switch (c->hdr[3]) {
        case 'e':
          c->state = ECHO;
          break;
        case 's':
          c->state = SINK;
          break;
        case 'r':
          c->state = SOURCE;
          c->count = length;
          set_events(ep, c, EPOLLOUT);
          return 1;
        default:
          finish(ep, c);
          return 0;
      }
    }
    if (len == 0) continue;
    if (c->state == SINK) c->count += len;
    else if (c->state == ECHO) {
      echo_bytes(ep, c, data, len);
      if (c->pend) return 1; /* stop reading until the peer takes what we owe it */
    }
  }
  return 1;
}

static int on_writable(int ep, struct conn *c) {
  if (c->state == ECHO) {
    while (c->pend_off < c->pend_len) {
      ssize_t w = write(c->fd, c->pend + c->pend_off, c->pend_len - c->pend_off);
      if (w > 0) {
        c->pend_off += (size_t)w;
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
      finish(ep, c);
      return 0;
    }
    free(c->pend);
    c->pend = NULL;
    set_events(ep, c, EPOLLIN);
    return 1;
  }
  if (c->state == SOURCE) {
    for (int rounds = 0; rounds < 16 && c->count > 0; rounds++) {
      size_t n = c->count < CHUNK ? (size_t)c->count : CHUNK;
      ssize_t w = write(c->fd, source_buf, n);
      if (w > 0) {
        c->count -= (uint64_t)w;
        continue;
      }
      if (w < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
      finish(ep, c);
      return 0;
    }
    if (c->count == 0) {
      shutdown(c->fd, SHUT_WR);
      c->state = DRAIN;
      set_events(ep, c, EPOLLIN);
    }
  }
  return 1;
}

static void *loop(void *arg) {
  int lfd = (int)(intptr_t)arg;
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  unsigned char *scratch = malloc(CHUNK);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    for (int i = 0; i < n; i++) {
      struct conn *c = events[i].data.ptr;
      if (c == NULL) {
        for (int k = 0; k < 64; k++) {
          int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd < 0) break;
          int one = 1;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct conn *nc = calloc(1, sizeof *nc);
          nc->fd = fd;
          nc->state = READ_HEADER;
          struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      uint32_t e = events[i].events;
      if (e & EPOLLOUT) {
        if (!on_writable(ep, c)) continue;
      } else if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (c->pend) finish(ep, c); /* hung up while we still owed it bytes */
        else on_readable(ep, c, scratch);
      }
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 2;
  if (threads < 1 || threads > MAX_THREADS) threads = 2;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  for (size_t i = 0; i < CHUNK; i++) source_buf[i] = (unsigned char)(i * 2654435761u >> 13);
  int first = listen_socket(0);
  pthread_t tid;
  pthread_create(&tid, NULL, loop, (void *)(intptr_t)first);
  for (int t = 1; t < threads; t++) pthread_create(&tid, NULL, loop, (void *)(intptr_t)listen_socket(port));
  printf("port %d\n", port);
  fflush(stdout);
  /* Live exactly as long as the benchmark holds our stdin open. */
  char buf[64];
  while (read(0, buf, sizeof buf) > 0) {
  }
  return 0;
}
