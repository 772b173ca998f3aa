// A clock that runs SKEW_SECONDS (an environment variable) behind, for the process it is preloaded
// into: gettimeofday, time and clock_gettime(CLOCK_REALTIME*) only; monotonic clocks untouched.
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static long skew (void) {
  const char *s = getenv("SKEW_SECONDS");
  return s ? atol(s) : 0;
}

int clock_gettime (clockid_t id, struct timespec *ts) {
  int r = (int) syscall(SYS_clock_gettime, id, ts);
  if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec -= skew();
  return r;
}

int gettimeofday (struct timeval *tv, void *tz) {
  struct timespec ts;
  int r = clock_gettime(CLOCK_REALTIME, &ts);
  if (r == 0 && tv) {
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
  }
  (void) tz;
  return r;
}

time_t time (time_t *t) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (t) *t = ts.tv_sec;
  return ts.tv_sec;
}
