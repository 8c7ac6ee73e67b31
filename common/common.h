/*
 * common.h - the small internal library every cutover program links:
 * logging, a growable buffer, JSON on top of jsmn, UTF-8 checks and
 * Redis connection helpers. Prototypes are grouped by the file that
 * defines them.
 */
#ifndef CUTOVER_COMMON_H
#define CUTOVER_COMMON_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CUTOVER_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

/* log.c */
enum log_level { LOG_LEVEL_ERROR, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
void log_init(const char *progname, enum log_level level);
int log_level_parse(const char *text, enum log_level *out);
void log_msg(enum log_level level, const char *fmt, ...) CUTOVER_PRINTF(2, 3);
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* xalloc.c: allocation that aborts on exhaustion, as Redis does; a
 * daemon that cannot allocate a few bytes has nothing sensible left. */
void *xmalloc(size_t size);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
int64_t clock_monotonic_us(void);
int64_t clock_realtime_us(void);
void format_utc_ms(int64_t unix_ms, char *out, size_t outlen);

/* buf.c: a growable byte string, always NUL-terminated. */
struct buf {
	char *data;
	size_t len;
	size_t cap;
};
void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);
void buf_append(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_putc(struct buf *b, char c);
void buf_printf(struct buf *b, const char *fmt, ...) CUTOVER_PRINTF(2, 3);
char *buf_detach(struct buf *b);

/* utf8.c: small checks on text */
bool utf8_valid(const char *s, size_t len);
int hex_digit(char c);
int parse_decimal(const char *s, size_t len, long min, long max, int *out);

/* json.c: a thin, strict layer over jsmn. */
enum json_type { JSON_OBJECT, JSON_ARRAY, JSON_STRING, JSON_PRIMITIVE };
struct json_token {
	enum json_type type;
	int start;
	int end;
	int size; /* members of an object or array */
};
struct json_doc {
	const char *text;
	size_t len;
	struct json_token *tok;
	int ntok;
};
int json_parse(struct json_doc *doc, const char *text, size_t len, char *err, size_t errlen);
void json_doc_free(struct json_doc *doc);
int json_next(const struct json_doc *doc, int i);
int json_get_string(const struct json_doc *doc, int i, char **out, size_t *outlen, const char **why);
int json_get_bool(const struct json_doc *doc, int i, bool *out);
int json_get_int(const struct json_doc *doc, int i, long long *out);
bool json_key_is(const struct json_doc *doc, int i, const char *key);
void json_put_string(struct buf *b, const char *s, size_t len);

/* slot.c: hands immutable, reference-counted objects (flag snapshots,
 * configs) from one writer to many reader threads. The mutex guards a
 * pointer swap and a reference increment, nothing longer; a reader that
 * already holds an object checks `generation` (one atomic load) before
 * touching the mutex at all. */
struct slot {
	pthread_mutex_t lock;
	void *current;
	atomic_uint generation;
	void *(*ref)(void *obj);
	void (*unref)(void *obj);
};
void slot_init(struct slot *s, void *(*ref)(void *obj), void (*unref)(void *obj));
void slot_destroy(struct slot *s);
void slot_publish(struct slot *s, void *obj);
void *slot_acquire(struct slot *s);
void *slot_refresh(struct slot *s, void *held, unsigned *seen_generation);

/* redis_url.c */
struct redis_url {
	char *host;        /* NULL when socket_path is set */
	int port;
	char *socket_path; /* unix socket, or NULL */
	char *user;        /* ACL user, or NULL */
	char *password;    /* or NULL */
	int db;
};
int redis_url_parse(const char *text, struct redis_url *out, char *err, size_t errlen);
void redis_url_free(struct redis_url *u);

/* redis_conn.c: connections with AUTH and SELECT already sent. */
struct redisContext;
struct redisAsyncContext;
struct event_base;
struct redisContext *redis_connect(const struct redis_url *u, int timeout_ms, char *err,
				   size_t errlen);
struct redisAsyncContext *redis_connect_async(const struct redis_url *u, struct event_base *base,
					      char *err, size_t errlen);
const char *redis_error_text(const struct redisContext *c);
void redis_async_drop(struct redisAsyncContext **slot);
const char *redis_url_describe(const struct redis_url *u, char *out, size_t outlen);

#endif
