/*
 * log.c - diagnostic log to stderr: one line per event, with a UTC
 * timestamp, the program name and the level. The access log of the proxy
 * is a separate, structured stream; this one is for operators.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common.h"

static const char *log_progname = "cutover";
static enum log_level log_threshold = LOG_LEVEL_INFO;

static const char *const log_level_names[] = { "error", "warn", "info", "debug" };

void log_init(const char *progname, enum log_level level)
{
	log_progname = progname;
	log_threshold = level;
}

/* Parses "error", "warn", "info" or "debug". Returns 0, or -1 if unknown. */
int log_level_parse(const char *text, enum log_level *out)
{
	for (size_t i = 0; i < sizeof(log_level_names) / sizeof(log_level_names[0]); i++) {
		if (strcasecmp(text, log_level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (level > log_threshold)
		return;
	char stamp[32];
	format_utc_ms(clock_realtime_us() / 1000, stamp, sizeof(stamp));
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	/* One fprintf per line: stdio locks the stream, so lines from
	 * several threads do not interleave. */
	fprintf(stderr, "%s %s[%s] %s\n", stamp, log_progname, log_level_names[level], line);
}
