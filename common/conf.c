/*
 * conf.c - loads a libconfuse file and checks it as a whole; the first
 * problem is reported as "FILE:LINE: reason", as `nginx -t` does.
 * libconfuse finds syntax errors and unknown options; everything else is
 * checked by the caller's build function once the file is parsed, using
 * the line each option was set on. libconfuse keeps no such line, so a
 * validate callback installed on every option records where the parser
 * stood when it stored the value.
 *
 * libconfuse 3.3 keeps its scanner in globals and passes its callbacks no
 * user pointer: loads are serialized by a mutex, and the callbacks reach
 * the load in progress through a static pointer that the mutex guards.
 * Its line counter is wrong after comments (a # or // comment counts
 * three lines, a C comment one more than it spans), and a comment inside
 * a { list } is a syntax error; so the file is read whole and its
 * comments blanked out (newlines kept) before libconfuse sees it - a
 * scan that only tells comments from quoted strings, not a tokenizer.
 * An empty list runs no callback, so its errors can only be given the
 * section's line. Sections may nest one level below the root.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/conf.h"

#define WHY_MAX 256
#define WHAT_MAX 160
#define REDIS_PREFIX_MAX 64
#define CONFIG_FILE_MAX (1 << 20)

/* A line in the file: key is an option (the line it was set on) or a
 * section (the line it opened on). */
struct line_mark {
	const void *key;
	int line;
};

struct conf_loader {
	const char *path;
	cfg_t *root;
	struct line_mark *marks;
	size_t nmarks;
	char *err;
	size_t errlen;
	bool failed;
};

static pthread_mutex_t loader_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conf_loader *active_loader; /* guarded by loader_lock */

cfg_opt_t conf_redis_opts[] = {
	CFG_STR("url", "redis://127.0.0.1:6379/0", CFGF_NONE),
	CFG_STR("prefix", "cutover", CFGF_NONE),
	CFG_END(),
};

/* Keeps the first error only, as "FILE:LINE: reason", or "FILE: reason"
 * when no line applies (line 0). */
CUTOVER_PRINTF(3, 0)
static void report_v(struct conf_loader *ld, int line, const char *fmt, va_list ap)
{
	if (ld->failed)
		return;
	ld->failed = true;
	int n = line > 0 ? snprintf(ld->err, ld->errlen, "%s:%d: ", ld->path, line)
			 : snprintf(ld->err, ld->errlen, "%s: ", ld->path);
	if (n >= 0 && (size_t)n < ld->errlen)
		vsnprintf(ld->err + n, ld->errlen - (size_t)n, fmt, ap);
}

/* As report_v; returns -1 for the caller to pass on. */
int conf_report(struct conf_loader *ld, int line, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	report_v(ld, line, fmt, ap);
	va_end(ap);
	return -1;
}

/* libconfuse's error function: its messages carry no position, the line
 * is the one its parser stands on. */
CUTOVER_PRINTF(2, 0)
static void on_confuse_error(cfg_t *cfg, const char *fmt, va_list ap)
{
	report_v(active_loader, cfg->line, fmt, ap);
}

static struct line_mark *find_mark(const struct conf_loader *ld, const void *key)
{
	for (size_t i = 0; i < ld->nmarks; i++)
		if (ld->marks[i].key == key)
			return &ld->marks[i];
	return NULL;
}

static void add_mark(struct conf_loader *ld, const void *key, int line)
{
	ld->marks = xrealloc(ld->marks, (ld->nmarks + 1) * sizeof(*ld->marks));
	ld->marks[ld->nmarks++] = (struct line_mark){ key, line };
}

/* The line a section opened on; 0 for the file itself. A section whose
 * options were all left at their defaults has only its closing line. */
int conf_section_line(const struct conf_loader *ld, cfg_t *sec)
{
	if (sec == ld->root)
		return 0;
	const struct line_mark *m = find_mark(ld, sec);
	return m ? m->line : sec->line;
}

/* The line an option was set on, or its section's when it was not. */
int conf_option_line(const struct conf_loader *ld, cfg_t *sec, const char *name)
{
	const struct line_mark *m = find_mark(ld, cfg_getopt(sec, name));
	return m ? m->line : conf_section_line(ld, sec);
}

/* How messages name an option ("workers", "limits: body_bytes",
 * "route me: path") or, when name is NULL, a section ("route me"). */
static void name_option(const struct conf_loader *ld, cfg_t *sec, const char *name, char *out,
			size_t outlen)
{
	const char *title = cfg_title(sec);
	int n = 0;
	out[0] = '\0';
	if (sec != ld->root && title != NULL)
		n = snprintf(out, outlen, "%s %s", cfg_name(sec), title);
	else if (sec != ld->root)
		n = snprintf(out, outlen, "%s", cfg_name(sec));
	if (name != NULL && n >= 0 && (size_t)n < outlen)
		snprintf(out + n, outlen - (size_t)n, "%s%s", n > 0 ? ": " : "", name);
}

/* Reports a problem with option name of sec (or with sec itself when name
 * is NULL) on the line it was set on. Returns -1. */
int conf_fail(struct conf_loader *ld, cfg_t *sec, const char *name, const char *fmt, ...)
{
	char what[WHAT_MAX], why[WHY_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	name_option(ld, sec, name, what, sizeof(what));
	int line = name ? conf_option_line(ld, sec, name) : conf_section_line(ld, sec);
	return conf_report(ld, line, "%s: %s", what, why);
}

/*
 * libconfuse's validate callback, installed on every option. It runs when
 * a value has been stored (for a list, after each element and at the
 * closing brace) while cfg->line is still the option's line, and records
 * it; for a section it also records the line the section opened on, which
 * the root's line still holds while a section is being parsed. A plain
 * option set twice in one section is refused: the second would silently
 * win.
 */
static int note_option(cfg_t *cfg, cfg_opt_t *opt)
{
	struct conf_loader *ld = active_loader;
	if (cfg != ld->root && find_mark(ld, cfg) == NULL)
		add_mark(ld, cfg, ld->root->line);
	struct line_mark *m = find_mark(ld, opt);
	if (m == NULL) {
		add_mark(ld, opt, cfg->line);
		return 0;
	}
	if (!(opt->flags & CFGF_LIST)) {
		char what[WHAT_MAX];
		name_option(ld, cfg, opt->name, what, sizeof(what));
		cfg_error(cfg, "%s: set twice (first on line %d)", what, m->line);
		return -1;
	}
	if (opt->nvalues == 1) /* the first element of a new list */
		m->line = cfg->line;
	return 0;
}

bool conf_is_digit(char c)
{
	return c >= '0' && c <= '9';
}

bool conf_is_word_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || conf_is_digit(c) || c == '_';
}

bool conf_is_visible(char c)
{
	return c > ' ' && c < 0x7f;
}

/* How many of the first len bytes of s pass ok, from the start. */
size_t conf_span(const char *s, size_t len, bool (*ok)(char))
{
	size_t n = 0;
	while (n < len && ok(s[n]))
		n++;
	return n;
}

/* Whether s is not empty and every byte passes ok. */
bool conf_all_of(const char *s, bool (*ok)(char))
{
	size_t len = strlen(s);
	return len > 0 && conf_span(s, len, ok) == len;
}

/* libconfuse's integer parser reads "010" as octal, "0x10" as hex, and
 * can take a stale errno for an overflow; sizes and durations here are
 * plain decimal. Ranges are checked after parsing. Install it with
 * CFG_INT_CB. */
int conf_plain_decimal(cfg_t *cfg, cfg_opt_t *opt, const char *value, void *result)
{
	size_t len = strlen(value);
	if (len == 0 || len > 18 || conf_span(value, len, conf_is_digit) != len) {
		char what[WHAT_MAX];
		name_option(active_loader, cfg, opt->name, what, sizeof(what));
		cfg_error(cfg, "%s: '%s' is not a decimal number", what, value);
		return -1;
	}
	*(long *)result = strtol(value, NULL, 10);
	return 0;
}

/* Reads integer option name of sec into *out, requiring min..max. */
int conf_get_int(struct conf_loader *ld, cfg_t *sec, const char *name, long min, long max, int *out)
{
	long v = cfg_getint(sec, name);
	if (v < min || v > max)
		return conf_fail(ld, sec, name, "must be in %ld..%ld, not %ld", min, max, v);
	*out = (int)v;
	return 0;
}

/* The redis { } section: the URL must parse (it is kept as written). */
int conf_get_redis(struct conf_loader *ld, cfg_t *sec, char **url, char **prefix)
{
	const char *u = cfg_getstr(sec, "url"), *p = cfg_getstr(sec, "prefix");
	struct redis_url parsed;
	char why[WHY_MAX];
	if (redis_url_parse(u, &parsed, why, sizeof(why)) < 0)
		return conf_fail(ld, sec, "url", "%s", why);
	redis_url_free(&parsed);
	if (!conf_all_of(p, conf_is_visible) || strlen(p) > REDIS_PREFIX_MAX)
		return conf_fail(ld, sec, "prefix", "must be 1 to %d visible characters, without spaces",
				 REDIS_PREFIX_MAX);
	*url = xstrdup(u);
	*prefix = xstrdup(p);
	return 0;
}

/* Installs note_option on every option of opts, whose path from the root
 * is path ("" for the root; libconfuse joins names with '|'), in sections
 * that exist already and in those the file will add, at any depth. */
static void watch_options(cfg_t *root, cfg_opt_t *opts, const char *path)
{
	char name[128];
	for (cfg_opt_t *o = opts; o->name != NULL; o++) {
		snprintf(name, sizeof(name), "%s%s%s", path, path[0] ? "|" : "", o->name);
		if (o->type != CFGT_SEC || path[0] != '\0')
			cfg_set_validate_func(root, name, note_option);
		if (o->type == CFGT_SEC)
			watch_options(root, o->subopts, name);
	}
}

/* Replaces the comments of text (#, // and C comments, outside quoted
 * strings) with spaces, keeping every newline, so that libconfuse counts
 * lines right. */
static void blank_comments(char *text)
{
	enum { CODE, DOUBLE_QUOTED, SINGLE_QUOTED, LINE_COMMENT, BLOCK_COMMENT } state = CODE;
	for (char *p = text; *p; p++) {
		switch (state) {
		case CODE:
			if (*p == '"' || *p == '\'') {
				state = *p == '"' ? DOUBLE_QUOTED : SINGLE_QUOTED;
			} else if (*p == '#' || (p[0] == '/' && p[1] == '/')) {
				state = LINE_COMMENT;
				*p = ' ';
			} else if (p[0] == '/' && p[1] == '*') {
				state = BLOCK_COMMENT;
				p[0] = p[1] = ' ';
				p++;
			}
			break;
		case DOUBLE_QUOTED:
		case SINGLE_QUOTED:
			if (*p == '\\' && p[1] != '\0')
				p++;
			else if (*p == (state == DOUBLE_QUOTED ? '"' : '\''))
				state = CODE;
			break;
		case LINE_COMMENT:
			if (*p == '\n')
				state = CODE;
			else
				*p = ' ';
			break;
		case BLOCK_COMMENT:
			if (p[0] == '*' && p[1] == '/') {
				p[0] = p[1] = ' ';
				p++;
				state = CODE;
			} else if (*p != '\n') {
				*p = ' ';
			}
			break;
		}
	}
}

/* Reads the whole file (a regular file of at most 1 MiB; flex would end
 * the process on a read error, as reading a directory causes). Returns
 * the text with comments blanked (caller frees), or NULL after report. */
static char *read_config(struct conf_loader *ld)
{
	FILE *fp = fopen(ld->path, "r");
	struct stat st;
	if (fp == NULL) {
		conf_report(ld, 0, "cannot open: %s", strerror(errno));
		return NULL;
	}
	char *text = NULL;
	if (fstat(fileno(fp), &st) < 0 || !S_ISREG(st.st_mode)) {
		conf_report(ld, 0, "not a regular file");
	} else if (st.st_size > CONFIG_FILE_MAX) {
		conf_report(ld, 0, "larger than %d bytes", CONFIG_FILE_MAX);
	} else {
		text = xmalloc((size_t)st.st_size + 1);
		size_t n = fread(text, 1, (size_t)st.st_size, fp);
		if (ferror(fp) || memchr(text, '\0', n) != NULL) {
			conf_report(ld, 0, ferror(fp) ? "cannot read: %s" : "contains a NUL byte", strerror(errno));
			free(text);
			text = NULL;
		} else {
			text[n] = '\0';
			blank_comments(text);
		}
	}
	fclose(fp);
	return text;
}

/*
 * Reads the file at path with options opts and hands the parsed tree to
 * build, which checks it and fills arg. Returns 0, or -1 with the first
 * problem in err as "FILE:LINE: reason"; arg may then be half-filled and
 * the caller frees it. Safe to call from any thread.
 */
int conf_load(const char *path, cfg_opt_t *opts, conf_build_fn build, void *arg, char *err, size_t errlen)
{
	struct conf_loader ld = { .path = path, .err = err, .errlen = errlen };
	int rc = -1;
	char *text = read_config(&ld);
	if (text == NULL)
		return -1;
	pthread_mutex_lock(&loader_lock);
	active_loader = &ld;
	ld.root = cfg_init(opts, CFGF_NONE);
	if (ld.root == NULL) {
		conf_report(&ld, 0, "out of memory");
		goto done;
	}
	cfg_set_error_function(ld.root, on_confuse_error);
	watch_options(ld.root, ld.root->opts, "");
	if (cfg_parse_buf(ld.root, text) != CFG_SUCCESS) {
		conf_report(&ld, 0, "cannot parse"); /* only if libconfuse said nothing */
		goto done;
	}
	rc = build(&ld, ld.root, arg);
done:
	if (ld.root != NULL)
		cfg_free(ld.root);
	active_loader = NULL;
	pthread_mutex_unlock(&loader_lock);
	free(ld.marks);
	free(text);
	return rc;
}
