/*
 * xalloc.c - allocation helpers that abort on exhaustion, and clocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

static void *xalloc_check(void *p, size_t size)
{
	if (p == NULL && size != 0) {
		fprintf(stderr, "out of memory allocating %zu bytes\n", size);
		abort();
	}
	return p;
}

void *xmalloc(size_t size)
{
	return xalloc_check(malloc(size), size);
}

void *xcalloc(size_t n, size_t size)
{
	return xalloc_check(calloc(n, size), n * size);
}

void *xrealloc(void *p, size_t size)
{
	return xalloc_check(realloc(p, size), size);
}

char *xstrdup(const char *s)
{
	return xstrndup(s, strlen(s));
}

/* Copies exactly n bytes (which may contain no NUL) and terminates. */
char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static int64_t clock_us(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t clock_monotonic_us(void)
{
	return clock_us(CLOCK_MONOTONIC);
}

int64_t clock_realtime_us(void)
{
	return clock_us(CLOCK_REALTIME);
}

/* Writes unix_ms as "2026-11-25T18:22:27.123Z" into out. */
void format_utc_ms(int64_t unix_ms, char *out, size_t outlen)
{
	time_t secs = (time_t)(unix_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	char day[24];
	strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, outlen, "%s.%03dZ", day, (int)(unix_ms % 1000));
}
