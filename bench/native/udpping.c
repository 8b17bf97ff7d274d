/*
 * The UDP section's request/response helpers in C, as the TCP section's loadgen and service are, so
 * that the UDP tunnel's round trip is compared with the TCP tunnel's like with like:
 *
 *   udpping echo                          a UDP echo service on 127.0.0.1; prints "port N"
 *   udpping ping PORT ROUNDS WARMUP SIZE  one socket, SIZE-byte request/response one at a time;
 *                                         prints {"p50":µs,"p99":µs,"lost":n,"rounds":n}
 *                                         (a round without its answer within 1 s counts as lost)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 2) goto usage;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in me = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || bind(fd, (struct sockaddr *)&me, sizeof me) != 0) return perror("bind"), 1;
  static unsigned char buf[65536];
  if (strcmp(argv[1], "echo") == 0) {
    socklen_t len = sizeof me;
    getsockname(fd, (struct sockaddr *)&me, &len);
    printf("port %d\n", ntohs(me.sin_port));
    fflush(stdout);
    for (;;) {
      struct sockaddr_in from;
      socklen_t flen = sizeof from;
      ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
      if (n >= 0) sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, flen);
    }
  }
  if (strcmp(argv[1], "ping") != 0 || argc < 6) goto usage;
  int port = atoi(argv[2]), rounds = atoi(argv[3]), warmup = atoi(argv[4]), size = atoi(argv[5]);
  if (port <= 0 || rounds <= 0 || warmup < 0 || size < 0 || size > 65507) goto usage;
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) return perror("connect"), 1;
  struct timeval timeout = {.tv_sec = 1};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  memset(buf, 0x61, (size_t)size);
  double *samples = malloc(sizeof(double) * (size_t)rounds);
  int taken = 0, lost = 0;
  for (int i = 0; i < warmup + rounds; i++) {
    double started = now_us();
    if (send(fd, buf, (size_t)size, 0) < 0) {
      lost++;
      continue;
    }
    if (recv(fd, buf, sizeof buf, 0) < 0) {
      lost++;
      continue;
    }
    if (i >= warmup) samples[taken++] = now_us() - started;
  }
  qsort(samples, (size_t)taken, sizeof(double), cmp);
  double p50 = taken ? samples[taken / 2] : 0, p99 = taken ? samples[(int)(taken * 0.99)] : 0;
  printf("{\"p50\":%.0f,\"p99\":%.0f,\"lost\":%d,\"rounds\":%d}\n", p50, p99, lost, rounds);
  return 0;
usage:
  fprintf(stderr, "usage: udpping echo | ping PORT ROUNDS WARMUP SIZE\n");
  return 2;
}
