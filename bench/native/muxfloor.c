/*
 * The floor of a tunnel's own topology, for the `mux-floor` provider: a minimal multiplexing relay in C.
 * Two processes, as a tunnel has: `muxfloor server` accepts visitors and carries every visitor
 * connection over one TCP link to `muxfloor client`, which opens its own connection to the service
 * per visitor. Each visitor therefore costs what it costs through a tunnel (two TCP connections set up
 * and torn down, plus frames on the shared link), and each byte crosses the same three loopback hops,
 * with the least user-space work that topology allows:
 * - one epoll loop per process (as a Bun role has one event loop);
 * - a visitor's read lands in the link's output buffer behind a 9-byte header (no copy); everything
 *   read in one round of events leaves in one write to the link;
 * - a DATA payload is written to its socket straight from the link's input buffer (no copy);
 * - no WebSocket framing or masking, no per-stream credit, nothing kept for a resume.
 *
 * Backpressure, coarse but bounded: while the link takes less than is queued, visitors are not read;
 * while a socket takes less than the DATA frame addressed to it, the link is not read (every stream
 * waits for that one, which a real tunnel's per-stream credit avoids).
 *
 * Frames: type (1 byte), stream id (4), payload length (4), payload. OPEN (server → client), DATA, FIN
 * (the sender's side of the stream read EOF), RST (the stream failed; close it).
 *
 * Usage: muxfloor server            prints "link N", accepts one link, then prints "port N" (visitors)
 *        muxfloor client LINK SERVICE   connects to 127.0.0.1:LINK, forwards to 127.0.0.1:SERVICE
 * Either exits when its stdin closes or the link ends.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum { OPEN = 1, DATA = 2, FIN = 3, RST = 4 };
#define HEADER 9
#define CHUNK (256 * 1024)
#define OUT_SIZE (1024 * 1024)
#define IN_SIZE (512 * 1024)
#define SLOTS (1 << 20)

struct stream {
  int fd;
  uint32_t id;
  int connecting; /* the client's connect to the service has not completed */
  int rd_eof;     /* our fd read EOF (FIN sent on the link) */
  int wr_shut;    /* the peer's FIN was passed on with shutdown(SHUT_WR) */
  int dead;       /* freed: its memory waits for the end of the round (events may still name it) */
  struct stream *next_dead;
};

static struct stream *slots[SLOTS];
static int is_server, link_fd = -1, listener = -1, top, inner, service_port;
static uint32_t next_id = 1;
static struct stream *graveyard;

/* Link output: frames queued in [out_off, out_len). */
static unsigned char out[OUT_SIZE];
static size_t out_off, out_len;
static int out_blocked;
/* RSTs that found the link's output full: queued as soon as it drains (each id at most once). */
static uint32_t rst_pending[SLOTS];
static size_t rst_count;

/* Link input: unparsed bytes in [in_off, in_len); the DATA frame being written, if any. */
static unsigned char in[IN_SIZE];
static size_t in_off, in_len;
static struct stream *cur; /* NULL while its stream is gone: its payload is skipped */
static uint32_t cur_left;  /* payload bytes of the current DATA frame not yet consumed (0: at a header) */
static struct stream *in_blocked; /* the socket the link waits on, watched in `top` for EPOLLOUT */
static int resume_pending;         /* that socket was freed: parse on at the end of the round */

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void put_header(unsigned char *at, int type, uint32_t id, uint32_t len) {
  at[0] = (unsigned char)type;
  memcpy(at + 1, &id, 4);
  memcpy(at + 5, &len, 4);
}

/* Queues a frame without payload; the caller made sure there is room. */
static void queue_control(int type, uint32_t id) {
  put_header(out + out_len, type, id, 0);
  out_len += HEADER;
}

static void watch(int ep, int op, int fd, uint32_t events, void *ptr) {
  struct epoll_event ev = {.events = events, .data.ptr = ptr};
  epoll_ctl(ep, op, fd, &ev);
}

/* The link is read unless a socket holds up its input, and watched for room while output waits. */
static void watch_link(void) {
  watch(top, EPOLL_CTL_MOD, link_fd, (in_blocked ? 0 : EPOLLIN) | (out_blocked ? EPOLLOUT : 0), &link_fd);
}

/* Reads visitors (and accepts them) only while the link takes what is queued. */
static void set_out_blocked(int blocked) {
  if (blocked == out_blocked) return;
  out_blocked = blocked;
  int op = blocked ? EPOLL_CTL_DEL : EPOLL_CTL_ADD;
  watch(top, op, inner, EPOLLIN, &inner);
  if (listener >= 0) watch(top, op, listener, EPOLLIN, &listener);
  watch_link();
}

/* Writes what is queued for the link, as much as it takes. */
static void flush_out(void) {
  while (out_off < out_len) {
    ssize_t n = write(link_fd, out + out_off, out_len - out_off);
    if (n < 0) {
      if (errno == EAGAIN) break;
      die("link write");
    }
    out_off += (size_t)n;
  }
  if (out_off == out_len) out_off = out_len = 0;
  while (rst_count && OUT_SIZE - out_len >= HEADER) queue_control(RST, rst_pending[--rst_count]);
  set_out_blocked(out_len != 0);
}

/* Makes room for `need` more bytes of output; returns 0 when there is room. */
static int room(size_t need) {
  if (OUT_SIZE - out_len >= need) return 0;
  flush_out();
  if (out_off) { /* a partial write left a tail: move it to the front */
    memmove(out, out + out_off, out_len - out_off);
    out_len -= out_off;
    out_off = 0;
  }
  return OUT_SIZE - out_len >= need ? 0 : -1;
}

/* Tells the peer that stream `id` failed, now or once the link drains. */
static void queue_rst(uint32_t id) {
  if (room(HEADER) == 0) queue_control(RST, id);
  else if (rst_count < SLOTS) rst_pending[rst_count++] = id;
}

static void arm(struct stream *s) {
  uint32_t events = 0;
  if (s->connecting) events |= EPOLLOUT;
  if (!s->connecting && !s->rd_eof) events |= EPOLLIN;
  watch(inner, EPOLL_CTL_MOD, s->fd, events, s);
}

static struct stream *add_stream(int fd, uint32_t id, int connecting) {
  struct stream *s = calloc(1, sizeof *s);
  if (!s) die("calloc");
  s->fd = fd;
  s->id = id;
  s->connecting = connecting;
  slots[id & (SLOTS - 1)] = s;
  nodelay(fd);
  watch(inner, EPOLL_CTL_ADD, fd, connecting ? EPOLLOUT : EPOLLIN, s);
  return s;
}

static void free_stream(struct stream *s) {
  close(s->fd);
  slots[s->id & (SLOTS - 1)] = NULL;
  if (cur == s) cur = NULL;
  if (in_blocked == s) { /* close() took it out of both epoll sets */
    in_blocked = NULL;
    resume_pending = 1;
  }
  s->dead = 1;
  s->next_dead = graveyard;
  graveyard = s;
}

static void maybe_free(struct stream *s) {
  if (s->rd_eof && s->wr_shut) free_stream(s);
}

static struct stream *find(uint32_t id) {
  struct stream *s = slots[id & (SLOTS - 1)];
  return s && s->id == id ? s : NULL;
}

/* The stream failed on our side: tell the peer and forget it. */
static void reset(struct stream *s) {
  queue_rst(s->id);
  free_stream(s);
}

/* A visitor (server) or service connection (client) is readable: frame what it holds. */
static void on_stream_readable(struct stream *s) {
  if (room(HEADER + 16 * 1024)) return; /* the link is full: read it once the link drains */
  size_t space = OUT_SIZE - out_len - HEADER;
  ssize_t n = read(s->fd, out + out_len + HEADER, space < CHUNK ? space : CHUNK);
  if (n > 0) {
    put_header(out + out_len, DATA, s->id, (uint32_t)n);
    out_len += HEADER + (size_t)n;
  } else if (n == 0) {
    queue_control(FIN, s->id);
    s->rd_eof = 1;
    arm(s);
    maybe_free(s);
  } else if (errno != EAGAIN) {
    reset(s);
  }
}

static void resume_input(void);

/* The link is not read until `s` takes its bytes; `top` reports when it can, even while visitors are
 * not being read (a link blocked both ways must still see its sockets drain). */
static void block_input_on(struct stream *s) {
  in_blocked = s;
  watch(top, EPOLL_CTL_ADD, s->fd, EPOLLOUT, s);
}

static void on_stream_writable(struct stream *s) {
  if (s->connecting) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
      reset(s);
      return;
    }
    s->connecting = 0;
  }
  arm(s);
  if (in_blocked == s) resume_input();
}

/* Parses link input until it runs out or a socket cannot take its bytes. */
static void parse_input(void) {
  while (in_off < in_len) {
    if (cur_left) {
      size_t avail = in_len - in_off < cur_left ? in_len - in_off : cur_left;
      size_t done = avail;
      if (cur) {
        ssize_t w = write(cur->fd, in + in_off, avail);
        if (w < 0 && errno != EAGAIN) {
          reset(cur);
          w = (ssize_t)avail; /* skip the rest of its payload */
        }
        done = w > 0 ? (size_t)w : 0;
      }
      in_off += done;
      cur_left -= (uint32_t)done;
      if (done < avail) {
        block_input_on(cur);
        return;
      }
      continue;
    }
    if (in_len - in_off < HEADER) break;
    unsigned char *h = in + in_off;
    uint32_t id, len;
    memcpy(&id, h + 1, 4);
    memcpy(&len, h + 5, 4);
    struct stream *s = find(id);
    if (s && s->connecting && h[0] == FIN) {
      block_input_on(s); /* a FIN waits for the connection (bytes are tried: a loopback connect is
                            usually done before its EPOLLOUT is seen, and EAGAIN says when not) */
      return;
    }
    in_off += HEADER;
    if (h[0] == DATA) {
      cur = s;
      cur_left = len;
    } else if (h[0] == OPEN && !is_server) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(service_port)};
      to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      if (fd < 0 || (connect(fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS)) {
        if (fd >= 0) close(fd);
        queue_rst(id);
      } else if (slots[id & (SLOTS - 1)]) { /* its slot is still taken by an older stream */
        close(fd);
        queue_rst(id);
      } else {
        add_stream(fd, id, 1);
      }
    } else if (h[0] == FIN && s) {
      shutdown(s->fd, SHUT_WR);
      s->wr_shut = 1;
      maybe_free(s);
    } else if (h[0] == RST && s) {
      free_stream(s);
    }
  }
  /* Keep a partial header (or nothing) at the front for the next read. */
  if (in_off == in_len) {
    in_off = in_len = 0;
  } else if (in_off > IN_SIZE / 2 || in_len == IN_SIZE) {
    memmove(in, in + in_off, in_len - in_off);
    in_len -= in_off;
    in_off = 0;
  }
}

static void resume_input(void) {
  if (in_blocked) watch(top, EPOLL_CTL_DEL, in_blocked->fd, 0, NULL);
  in_blocked = NULL;
  resume_pending = 0;
  parse_input();
  watch_link();
}

static void on_link_readable(void) {
  if (in_blocked || in_len == IN_SIZE) return; /* parse_input leaves room unless it is blocked */
  ssize_t n = read(link_fd, in + in_len, IN_SIZE - in_len);
  if (n == 0) exit(0);
  if (n < 0) {
    if (errno == EAGAIN) return;
    die("link read");
  }
  in_len += (size_t)n;
  parse_input();
  if (in_blocked) watch_link();
}

static void on_accept(void) {
  for (;;) {
    if (room(HEADER)) return;
    int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    /* The next free id; bounded: a full table (more visitors than SLOTS) refuses the visitor. */
    uint32_t probes = 0;
    while ((slots[next_id & (SLOTS - 1)] || next_id == 0) && probes++ < SLOTS) next_id++;
    if (probes > SLOTS) {
      close(fd);
      continue;
    }
    struct stream *s = add_stream(fd, next_id++, 0);
    queue_control(OPEN, s->id);
  }
}

static int listen_loopback(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  struct sockaddr_in addr = {.sin_family = AF_INET};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
  if (listen(fd, 4096) < 0) die("listen");
  if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) die("getsockname");
  *port = ntohs(addr.sin_port);
  return fd;
}

static void *watch_stdin(void *arg) {
  (void)arg;
  char c;
  while (read(0, &c, 1) > 0) {
  }
  exit(0);
}

int main(int argc, char **argv) {
  is_server = argc == 2 && strcmp(argv[1], "server") == 0;
  if (!is_server && !(argc == 4 && strcmp(argv[1], "client") == 0)) {
    fprintf(stderr, "usage: muxfloor server | muxfloor client LINK_PORT SERVICE_PORT\n");
    return 2;
  }
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  pthread_t tid;
  pthread_create(&tid, NULL, watch_stdin, NULL);
  if (is_server) {
    int port;
    int link_listener = listen_loopback(&port);
    printf("link %d\n", port);
    fflush(stdout);
    link_fd = accept4(link_listener, NULL, NULL, SOCK_CLOEXEC);
    if (link_fd < 0) die("accept link");
    close(link_listener);
    listener = listen_loopback(&port);
    printf("port %d\n", port);
    fflush(stdout);
  } else {
    service_port = atoi(argv[3]);
    link_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (link_fd < 0 || connect(link_fd, (struct sockaddr *)&to, sizeof to) < 0) die("connect link");
  }
  nodelay(link_fd);
  signal(SIGPIPE, SIG_IGN);
  if (fcntl(link_fd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
  if (listener >= 0 && fcntl(listener, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
  top = epoll_create1(EPOLL_CLOEXEC);
  inner = epoll_create1(EPOLL_CLOEXEC);
  if (top < 0 || inner < 0) die("epoll_create1");
  watch(top, EPOLL_CTL_ADD, link_fd, EPOLLIN, &link_fd);
  watch(top, EPOLL_CTL_ADD, inner, EPOLLIN, &inner);
  if (listener >= 0) watch(top, EPOLL_CTL_ADD, listener, EPOLLIN, &listener);
  struct epoll_event events[16], ready[256];
  for (;;) {
    int n = epoll_wait(top, events, 16, -1);
    for (int i = 0; i < n; i++) {
      void *p = events[i].data.ptr;
      if (p == &link_fd) {
        if (events[i].events & EPOLLOUT) flush_out();
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_link_readable();
      } else if (p == &listener) {
        if (!out_blocked) on_accept();
      } else if (p != &inner) {
        struct stream *s = p; /* the socket the link input waits on */
        if (!s->dead) on_stream_writable(s);
      } else if (!out_blocked) {
        int m = epoll_wait(inner, ready, 256, 0);
        for (int j = 0; j < m; j++) {
          struct stream *s = ready[j].data.ptr;
          if (s->dead) continue; /* freed earlier in this batch */
          uint32_t ev = ready[j].events;
          if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_stream_writable(s);
          if (s->dead) continue;
          if (!out_blocked && ((ev & EPOLLIN) || ((ev & (EPOLLHUP | EPOLLERR)) && !s->rd_eof)))
            on_stream_readable(s);
        }
      }
    }
    if (resume_pending) resume_input();
    /* Everything this round framed leaves in one write. */
    if (out_len && !out_blocked) flush_out();
    while (graveyard) {
      struct stream *s = graveyard;
      graveyard = s->next_dead;
      free(s);
    }
  }
}
