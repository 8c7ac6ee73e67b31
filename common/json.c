/*
 * json.c - strict JSON on top of jsmn.
 *
 * jsmn only finds token boundaries; it accepts "tru" as a primitive,
 * leaves escapes undecoded and ignores what follows the first value. This
 * file adds what a strict decoder needs: one top-level value, literal and
 * number syntax, escape decoding with surrogate pairs, and UTF-8 checks.
 */
#define JSMN_STRICT
#include <jsmn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static bool json_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Number syntax of RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number_valid(const char *s, size_t len)
{
	size_t i = 0;
	if (i < len && s[i] == '-')
		i++;
	if (i < len && s[i] == '0') {
		i++;
	} else if (i < len && s[i] >= '1' && s[i] <= '9') {
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
	} else {
		return false;
	}
	if (i < len && s[i] == '.') {
		size_t digits = ++i;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == digits)
			return false;
	}
	if (i < len && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < len && (s[i] == '+' || s[i] == '-'))
			i++;
		size_t digits = i;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++;
		if (i == digits)
			return false;
	}
	return i == len;
}

static bool json_primitive_valid(const char *s, size_t len)
{
	return (len == 4 && memcmp(s, "true", 4) == 0) || (len == 5 && memcmp(s, "false", 5) == 0) ||
	       (len == 4 && memcmp(s, "null", 4) == 0) || json_number_valid(s, len);
}

/* A token's span in the text: jsmn leaves the quotes out of strings. */
static int tok_begin(const struct json_token *t)
{
	return t->type == JSON_STRING ? t->start - 1 : t->start;
}

static int tok_end(const struct json_token *t)
{
	return t->type == JSON_STRING ? t->end + 1 : t->end;
}

/* Between two tokens: whitespace around exactly one sep (none if 0). */
static bool json_gap_ok(const char *text, int from, int to, char sep)
{
	bool have_sep = sep == 0;
	for (int i = from; i < to; i++) {
		if (json_is_space(text[i]))
			continue;
		if (text[i] != sep || have_sep)
			return false;
		have_sep = true;
	}
	return have_sep;
}

/*
 * jsmn accepts {"a":1 "b":2}, {"a" "b"}, [1,] and {"a"}; this walk checks
 * the separators between the tokens of the value at i. Returns the index
 * after the value, or -1.
 */
static int json_check_value(const struct json_doc *doc, int i)
{
	const struct json_token *t = &doc->tok[i];
	if (t->type != JSON_OBJECT && t->type != JSON_ARRAY)
		return i + 1;
	bool object = t->type == JSON_OBJECT;
	int pos = t->start + 1, next = i + 1;
	for (int k = 0; k < t->size; k++) {
		if (next >= doc->ntok)
			return -1;
		const struct json_token *item = &doc->tok[next];
		if (!json_gap_ok(doc->text, pos, tok_begin(item), k ? ',' : 0))
			return -1;
		pos = tok_end(item);
		if (object) {
			/* A key is a string followed by ':' and its value. */
			if (item->type != JSON_STRING || next + 1 >= doc->ntok)
				return -1;
			item = &doc->tok[++next];
			if (!json_gap_ok(doc->text, pos, tok_begin(item), ':'))
				return -1;
		}
		if ((next = json_check_value(doc, next)) < 0)
			return -1;
		pos = tok_end(item);
	}
	return json_gap_ok(doc->text, pos, t->end - 1, 0) ? next : -1;
}

/*
 * Tokenizes text (borrowed; must outlive doc). Returns 0, or -1 with a
 * reason in err. On success the caller releases doc with json_doc_free.
 */
int json_parse(struct json_doc *doc, const char *text, size_t len, char *err, size_t errlen)
{
	memset(doc, 0, sizeof(*doc));
	jsmn_parser parser;
	jsmn_init(&parser);
	int n = jsmn_parse(&parser, text, len, NULL, 0);
	if (n < 0) {
		snprintf(err, errlen, "%s", n == JSMN_ERROR_PART ? "truncated JSON" : "malformed JSON");
		return -1;
	}
	if (n == 0) {
		snprintf(err, errlen, "empty JSON document");
		return -1;
	}
	jsmntok_t *raw = xcalloc((size_t)n, sizeof(*raw));
	jsmn_init(&parser);
	n = jsmn_parse(&parser, text, len, raw, (unsigned)n);
	if (n < 0) {
		free(raw);
		snprintf(err, errlen, "malformed JSON");
		return -1;
	}
	doc->text = text;
	doc->len = len;
	doc->ntok = n;
	doc->tok = xcalloc((size_t)n, sizeof(*doc->tok));
	for (int i = 0; i < n; i++) {
		doc->tok[i].type = raw[i].type == JSMN_OBJECT  ? JSON_OBJECT
				   : raw[i].type == JSMN_ARRAY ? JSON_ARRAY
				   : raw[i].type == JSMN_STRING ? JSON_STRING
								: JSON_PRIMITIVE;
		doc->tok[i].start = raw[i].start;
		doc->tok[i].end = raw[i].end;
		doc->tok[i].size = raw[i].size;
	}
	free(raw);

	for (int i = 0; i < n; i++) {
		const struct json_token *t = &doc->tok[i];
		if (t->type == JSON_PRIMITIVE &&
		    !json_primitive_valid(text + t->start, (size_t)(t->end - t->start))) {
			snprintf(err, errlen, "invalid literal at offset %d", t->start);
			goto fail;
		}
	}
	/* Exactly one well-formed value, surrounded only by whitespace. */
	int end = json_check_value(doc, 0);
	if (end < 0) {
		snprintf(err, errlen, "malformed JSON: misplaced or missing ',' or ':'");
		goto fail;
	}
	if (end != n) {
		snprintf(err, errlen, "more than one JSON value");
		goto fail;
	}
	for (size_t i = (size_t)tok_end(&doc->tok[0]); i < len; i++) {
		if (!json_is_space(text[i])) {
			snprintf(err, errlen, "trailing characters after JSON value");
			goto fail;
		}
	}
	return 0;
fail:
	json_doc_free(doc);
	return -1;
}

void json_doc_free(struct json_doc *doc)
{
	free(doc->tok);
	doc->tok = NULL;
	doc->ntok = 0;
}

/* Index of the token after the whole value at i (its next sibling). */
int json_next(const struct json_doc *doc, int i)
{
	int pending = 1;
	while (pending > 0 && i < doc->ntok) {
		const struct json_token *t = &doc->tok[i];
		pending--;
		if (t->type == JSON_OBJECT)
			pending += 2 * t->size;
		else if (t->type == JSON_ARRAY)
			pending += t->size;
		i++;
	}
	return i;
}

bool json_key_is(const struct json_doc *doc, int i, const char *key)
{
	const struct json_token *t = &doc->tok[i];
	size_t n = (size_t)(t->end - t->start);
	return t->type == JSON_STRING && strlen(key) == n && memcmp(doc->text + t->start, key, n) == 0;
}

/* Four hex digits; jsmn has already checked that they are. */
static uint32_t json_hex4(const char *s)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v = v << 4 | (uint32_t)hex_digit(s[i]);
	return v;
}

static void json_put_utf8(struct buf *b, uint32_t cp)
{
	char s[4];
	size_t n;
	if (cp < 0x80) {
		s[0] = (char)cp, n = 1;
	} else if (cp < 0x800) {
		s[0] = (char)(0xc0 | (cp >> 6)), s[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
	} else if (cp < 0x10000) {
		s[0] = (char)(0xe0 | (cp >> 12)), s[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		s[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
	} else {
		s[0] = (char)(0xf0 | (cp >> 18)), s[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		s[2] = (char)(0x80 | ((cp >> 6) & 0x3f)), s[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
	}
	buf_append(b, s, n);
}

/*
 * Decodes the string token i. On success *out (caller frees) holds the
 * NUL-terminated UTF-8 text and *outlen its length; returns 0. Returns -1
 * with *why set (a static string) for a token that is not a string, a bad
 * escape, a lone surrogate, a raw control character or invalid UTF-8.
 */
int json_get_string(const struct json_doc *doc, int i, char **out, size_t *outlen, const char **why)
{
	const struct json_token *t = &doc->tok[i];
	if (t->type != JSON_STRING) {
		*why = "must be a string";
		return -1;
	}
	const char *s = doc->text + t->start;
	size_t len = (size_t)(t->end - t->start);
	struct buf b;
	buf_init(&b);
	for (size_t k = 0; k < len; k++) {
		unsigned char c = (unsigned char)s[k];
		if (c < 0x20) {
			*why = "contains a raw control character";
			goto fail;
		}
		if (c != '\\') {
			buf_putc(&b, (char)c);
			continue;
		}
		/* jsmn has checked every escape: one of "\/bfnrt or u and
		 * four hex digits. What it does not check is surrogates. */
		switch (s[++k]) {
		case 'b': buf_putc(&b, '\b'); break;
		case 'f': buf_putc(&b, '\f'); break;
		case 'n': buf_putc(&b, '\n'); break;
		case 'r': buf_putc(&b, '\r'); break;
		case 't': buf_putc(&b, '\t'); break;
		case 'u': {
			uint32_t cp = json_hex4(s + k + 1), lo = 0;
			k += 4;
			if (cp >= 0xd800 && cp <= 0xdbff && k + 6 < len && s[k + 1] == '\\' && s[k + 2] == 'u')
				lo = json_hex4(s + k + 3);
			if (cp >= 0xdc00 && cp <= 0xdfff) {
				*why = "has an unpaired surrogate escape";
				goto fail;
			}
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (lo < 0xdc00 || lo > 0xdfff) {
					*why = "has an unpaired surrogate escape";
					goto fail;
				}
				k += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			}
			json_put_utf8(&b, cp);
			break;
		}
		default: /* '"', '\\' and '/' stand for themselves */
			buf_putc(&b, s[k]);
		}
	}
	if (!utf8_valid(b.data ? b.data : "", b.len)) {
		*why = "is not valid UTF-8";
		goto fail;
	}
	*outlen = b.len;
	*out = buf_detach(&b);
	return 0;
fail:
	buf_free(&b);
	return -1;
}

int json_get_bool(const struct json_doc *doc, int i, bool *out)
{
	const struct json_token *t = &doc->tok[i];
	if (t->type != JSON_PRIMITIVE)
		return -1;
	if (doc->text[t->start] == 't')
		*out = true;
	else if (doc->text[t->start] == 'f')
		*out = false;
	else
		return -1;
	return 0;
}

/* An integer without fraction or exponent that fits in a long long. */
int json_get_int(const struct json_doc *doc, int i, long long *out)
{
	const struct json_token *t = &doc->tok[i];
	const char *s = doc->text + t->start;
	size_t len = (size_t)(t->end - t->start);
	if (t->type != JSON_PRIMITIVE || len == 0 || len > 18)
		return -1;
	long long v = 0;
	size_t k = s[0] == '-' ? 1 : 0;
	if (k == len)
		return -1;
	for (; k < len; k++) {
		if (s[k] < '0' || s[k] > '9')
			return -1;
		v = v * 10 + (s[k] - '0');
	}
	*out = s[0] == '-' ? -v : v;
	return 0;
}

/* The length of the valid UTF-8 sequence at s[0..len), or 0. */
static size_t utf8_sequence(const char *s, size_t len)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
	return n <= len && utf8_valid(s, n) ? n : 0;
}

/* Appends s (len bytes) as a quoted JSON string. Bytes that are not
 * UTF-8 (an id read from a stream, say) become U+FFFD, so the output is
 * always valid JSON. */
void json_put_string(struct buf *b, const char *s, size_t len)
{
	buf_putc(b, '"');
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c >= 0x80) {
			size_t n = utf8_sequence(s + i, len - i);
			if (n == 0) {
				buf_puts(b, "\\ufffd");
			} else {
				buf_append(b, s + i, n);
				i += n - 1;
			}
			continue;
		}
		switch (c) {
		case '"': buf_puts(b, "\\\""); break;
		case '\\': buf_puts(b, "\\\\"); break;
		case '\n': buf_puts(b, "\\n"); break;
		case '\r': buf_puts(b, "\\r"); break;
		case '\t': buf_puts(b, "\\t"); break;
		default:
			if (c < 0x20)
				buf_printf(b, "\\u%04x", c);
			else
				buf_putc(b, (char)c);
		}
	}
	buf_putc(b, '"');
}
