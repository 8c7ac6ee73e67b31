/*
 * metrics.c - the worker's counters, the latency of its last 1000
 * batches and its last error, written as one JSON object to
 * metrics_file every second by a thread of their own (and once more at
 * exit). The file is replaced with rename(2), so a reader never sees a
 * half-written one:
 *
 *   {"processed":120,"migrated":117,"failed":2,"retried":1,"dead":1,
 *    "not_found":1,...,"batch_latency_ms":{"p50":3.1,"p99":12.7,"batches":9},
 *    "last_error":"user u42: not-found","updated_at":"2026-11-25T18:22:27.123Z"}
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "migrator/migrator.h"

#define LATENCY_WINDOW 1000
#define LAST_ERROR_MAX 512

static const char *const counter_names[COUNT_MAX] = {
	[COUNT_PROCESSED] = "processed",
	[COUNT_MIGRATED] = "migrated",
	[COUNT_FAILED] = "failed",
	[COUNT_DEFERRED] = "deferred",
	[COUNT_RETRIED] = "retried",
	[COUNT_DEAD] = "dead",
	[COUNT_NOT_FOUND] = "not_found",
	[COUNT_MALFORMED] = "malformed",
	[COUNT_MAPPING] = "mapping",
	[COUNT_SINK_4XX] = "sink_4xx",
	[COUNT_ATTEMPTS] = "attempts_exhausted",
	[COUNT_LEGACY_ERRORS] = "legacy_errors",
	[COUNT_REDIS_ERRORS] = "redis_errors",
	[COUNT_SB_APPLIED] = "applied",
	[COUNT_SB_CREATED] = "created",
	[COUNT_SB_DELETED] = "deleted",
	[COUNT_SB_NOT_IN_LEGACY] = "not_in_legacy",
	[COUNT_SB_WRITE_ERRORS] = "write_errors",
	[COUNT_SB_LAG] = "lag_events",
	[COUNT_SB_PENDING] = "pending_events",
	[COUNT_SB_OLDEST_MS] = "oldest_unacked_ms",
};

/* What each command's file shows, in this order. */
const enum counter migrate_counters[] = {
	COUNT_PROCESSED, COUNT_MIGRATED, COUNT_FAILED,      COUNT_DEFERRED,      COUNT_RETRIED,
	COUNT_DEAD,      COUNT_NOT_FOUND, COUNT_MALFORMED,  COUNT_MAPPING,       COUNT_SINK_4XX,
	COUNT_ATTEMPTS,  COUNT_LEGACY_ERRORS, COUNT_REDIS_ERRORS, COUNT_MAX,
};
const enum counter syncback_counters[] = {
	COUNT_PROCESSED,       COUNT_SB_APPLIED,    COUNT_SB_CREATED,   COUNT_SB_DELETED,
	COUNT_SB_NOT_IN_LEGACY, COUNT_SB_WRITE_ERRORS, COUNT_FAILED,    COUNT_RETRIED,
	COUNT_DEAD,            COUNT_MALFORMED,     COUNT_MAPPING,      COUNT_ATTEMPTS,
	COUNT_LEGACY_ERRORS,   COUNT_REDIS_ERRORS,  COUNT_SB_LAG,       COUNT_SB_PENDING,
	COUNT_SB_OLDEST_MS,    COUNT_MAX,
};

static atomic_ullong counters[COUNT_MAX];

/* Guards everything below. */
static pthread_mutex_t metrics_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t latency_us[LATENCY_WINDOW]; /* a ring */
static size_t nlatency, latency_next;
static char last_error[LAST_ERROR_MAX];
static pthread_cond_t writer_wake;
static pthread_t writer_thread;
static bool writer_running, writer_stop;
static char *metrics_path;
static const enum counter *metrics_shown;

void metrics_count(enum counter c, unsigned long long n)
{
	atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

/* For the gauges. */
void metrics_set(enum counter c, unsigned long long value)
{
	atomic_store_explicit(&counters[c], value, memory_order_relaxed);
}

unsigned long long metrics_get(enum counter c)
{
	return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

void metrics_batch_latency(int64_t us)
{
	pthread_mutex_lock(&metrics_lock);
	latency_us[latency_next] = us;
	latency_next = (latency_next + 1) % LATENCY_WINDOW;
	if (nlatency < LATENCY_WINDOW)
		nlatency++;
	pthread_mutex_unlock(&metrics_lock);
}

/* Keeps the text as last_error (the log line has been written already). */
void metrics_error(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&metrics_lock);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	pthread_mutex_unlock(&metrics_lock);
	va_end(ap);
}

static int compare_int64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* The nearest-rank percentile p of the sorted v[0..n), in ms. */
static double percentile_ms(const int64_t *v, size_t n, double p)
{
	size_t rank = (size_t)(p * (double)n + 0.999999);
	return (double)v[rank > 0 ? rank - 1 : 0] / 1000.0;
}

/* The whole file's text into out. */
static void render(struct buf *out)
{
	int64_t sorted[LATENCY_WINDOW];
	char stamp[32];
	buf_putc(out, '{');
	for (const enum counter *c = metrics_shown; *c != COUNT_MAX; c++)
		buf_printf(out, "\"%s\":%llu,", counter_names[*c], metrics_get(*c));
	pthread_mutex_lock(&metrics_lock);
	size_t n = nlatency;
	memcpy(sorted, latency_us, n * sizeof(*sorted));
	buf_puts(out, "\"last_error\":");
	if (last_error[0])
		json_put_string(out, last_error, strlen(last_error));
	else
		buf_puts(out, "null");
	pthread_mutex_unlock(&metrics_lock);
	qsort(sorted, n, sizeof(*sorted), compare_int64);
	if (n > 0)
		buf_printf(out, ",\"batch_latency_ms\":{\"p50\":%.3f,\"p99\":%.3f,\"batches\":%zu}",
			   percentile_ms(sorted, n, 0.50), percentile_ms(sorted, n, 0.99), n);
	else
		buf_puts(out, ",\"batch_latency_ms\":{\"p50\":null,\"p99\":null,\"batches\":0}");
	format_utc_ms(clock_realtime_us() / 1000, stamp, sizeof(stamp));
	buf_printf(out, ",\"updated_at\":\"%s\"}\n", stamp);
}

/* Writes the file through a temporary beside it and rename(2). Returns
 * 0, or -1 with err. */
static int write_file(const char *path, char *err, size_t errlen)
{
	struct buf text, tmp;
	buf_init(&text);
	buf_init(&tmp);
	render(&text);
	buf_printf(&tmp, "%s.%ld.tmp", path, (long)getpid());
	int rc = -1;
	int fd = open(tmp.data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		snprintf(err, errlen, "cannot write %s: %s", tmp.data, strerror(errno));
		goto out;
	}
	ssize_t n = write(fd, text.data, text.len);
	if (close(fd) < 0 || n != (ssize_t)text.len) {
		snprintf(err, errlen, "cannot write %s: %s", tmp.data, n < 0 ? strerror(errno) : "short write");
		unlink(tmp.data);
		goto out;
	}
	if (rename(tmp.data, path) < 0) {
		snprintf(err, errlen, "cannot rename %s to %s: %s", tmp.data, path, strerror(errno));
		unlink(tmp.data);
		goto out;
	}
	rc = 0;
out:
	buf_free(&text);
	buf_free(&tmp);
	return rc;
}

/* The writer thread: once a second until metrics_stop. A failed write is
 * logged once, until a write succeeds again. */
static void *writer_main(void *arg)
{
	(void)arg;
	char err[512];
	bool failing = false;
	pthread_mutex_lock(&metrics_lock);
	while (!writer_stop) {
		struct timespec until;
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += 1;
		while (!writer_stop && pthread_cond_timedwait(&writer_wake, &metrics_lock, &until) != ETIMEDOUT)
			;
		if (writer_stop)
			break;
		pthread_mutex_unlock(&metrics_lock);
		int rc = write_file(metrics_path, err, sizeof(err));
		if (rc < 0 && !failing)
			log_error("metrics: %s", err);
		failing = rc < 0;
		pthread_mutex_lock(&metrics_lock);
	}
	pthread_mutex_unlock(&metrics_lock);
	return NULL;
}

/* Writes the file once (an unwritable path is an error now, not later),
 * with the counters shown (a list ending with COUNT_MAX), and starts the thread that rewrites it. Returns 0, or -1 with err. */
int metrics_start(const char *path, const enum counter *shown, char *err, size_t errlen)
{
	metrics_shown = shown;
	if (write_file(path, err, errlen) < 0)
		return -1;
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&writer_wake, &attr);
	pthread_condattr_destroy(&attr);
	metrics_path = xstrdup(path);
	writer_stop = false;
	if (pthread_create(&writer_thread, NULL, writer_main, NULL) != 0) {
		snprintf(err, errlen, "cannot start the metrics thread");
		pthread_cond_destroy(&writer_wake);
		free(metrics_path);
		metrics_path = NULL;
		return -1;
	}
	writer_running = true;
	return 0;
}

/* Stops the thread and writes the final counters. A no-op if
 * metrics_start did not succeed. */
void metrics_stop(void)
{
	char err[512];
	if (!writer_running)
		return;
	pthread_mutex_lock(&metrics_lock);
	writer_stop = true;
	pthread_cond_signal(&writer_wake);
	pthread_mutex_unlock(&metrics_lock);
	pthread_join(writer_thread, NULL);
	writer_running = false;
	if (write_file(metrics_path, err, sizeof(err)) < 0)
		log_error("metrics: %s", err);
	pthread_cond_destroy(&writer_wake);
	free(metrics_path);
	metrics_path = NULL;
}
