#!/usr/bin/perl
#
# gen-buckets.pl - generate the user-bucketing test vectors for cutover.
#
# Bucket definition (must match the C implementation):
#
#     bucket = murmur3_x86_32(SALT . ":" . USER_ID, seed 0) mod 10000
#
# where SALT and USER_ID are UTF-8 byte strings and "." is byte concatenation.
#
# This generator is deliberately independent of the C code: it does not read,
# link or port any of cutover's sources. The hash comes from Debian's separate
# pure-Perl implementation, Digest::MurmurHash3::PurePerl (package
# libdigest-murmurhash3-pureperl-perl), so a bug in the C murmur3 code cannot
# silently leak into the expected values.
#
# Output (stdout): a few "#" comment lines, then one row per vector:
#
#     salt<TAB>user_id<TAB>bucket
#
# bucket is decimal in 0..9999. salt may be empty (the row then starts with a
# TAB). No field contains TAB, CR, LF or any other control character, so
# readers split on TAB only. The output is UTF-8 and its bytes are exactly the
# bytes that were hashed.
#
# All pseudo-random choices come from a fixed xorshift32 sequence implemented
# below (not perl's rand/srand), so the output is byte-for-byte reproducible
# across perl versions and platforms.
#
# Regenerate (from the repository root):
#
#     perl tests/vectors/gen-buckets.pl > tests/vectors/buckets.tsv
#
use strict;
use warnings;

use Encode ();
use Digest::MurmurHash3::PurePerl qw(murmur32);

binmode STDOUT, ':raw';

my $BUCKETS = 10000;

# ---------------------------------------------------------------------------
# Byte handling.
#
# Every salt and user id in this script is held as a *byte* string (UTF-8
# encoded, no utf8 flag). Digest::MurmurHash3::PurePerl::murmur32 calls
# utf8::encode() on its argument unconditionally, so handing it a byte string
# with high bytes would double-encode them (each byte treated as Latin-1).
# We therefore decode the UTF-8 bytes to a character string first and check
# that the module's encoding reproduces exactly the original bytes.
# ---------------------------------------------------------------------------

# u("\x{...}") : character string -> UTF-8 byte string
sub u {
    my ($chars) = @_;
    return Encode::encode('UTF-8', $chars, Encode::FB_CROAK);
}

sub hash_bytes {
    my ($bytes) = @_;
    die "internal: wide character in byte string\n"
        unless utf8::downgrade(my $copy = $bytes, 1);
    my $chars = Encode::decode('UTF-8', $copy, Encode::FB_CROAK);
    my $check = $chars;
    utf8::encode($check);    # what murmur32 will do internally
    die "internal: UTF-8 round trip changed the bytes\n" unless $check eq $bytes;
    return murmur32($chars, 0);
}

sub bucket {
    my ($salt, $uid) = @_;
    return hash_bytes($salt . ':' . $uid) % $BUCKETS;
}

# ---------------------------------------------------------------------------
# Deterministic PRNG: xorshift32 (Marsaglia), fixed seed.
# ---------------------------------------------------------------------------

my $rng_state = 0x2545F491;

sub rnd32 {
    my $x = $rng_state;
    $x ^= ($x << 13) & 0xFFFFFFFF;
    $x ^= $x >> 17;
    $x ^= ($x << 5) & 0xFFFFFFFF;
    $rng_state = $x & 0xFFFFFFFF;
    return $rng_state;
}

sub rnd { my ($n) = @_; return rnd32() % $n; }          # 0 .. n-1
sub pick { return $_[ rnd(scalar @_) ]; }

# ---------------------------------------------------------------------------
# Id generators (all return UTF-8 byte strings)
# ---------------------------------------------------------------------------

my @HEX = split //, '0123456789abcdef';
my @ALNUM = split //, 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
# printable ASCII without control chars; space, ':', '/', '"', '\' included
my @PRINT = map { chr } 0x20 .. 0x7E;

sub str_from { my ($n, @set) = @_; return join '', map { pick(@set) } 1 .. $n; }

sub numeric_id {
    my $digits = 1 + rnd(19);
    my $s = 1 + rnd(9);                    # no leading zero
    $s .= rnd(10) for 2 .. $digits;
    return "$s";
}

sub objectid { return str_from(24, @HEX); }

sub uuid {
    my $h = str_from(32, @HEX);
    substr($h, 12, 1) = '4';
    substr($h, 16, 1) = pick(qw(8 9 a b));
    my $s = join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4),
        substr($h, 16, 4), substr($h, 20, 12);
    $s = uc $s if rnd(4) == 0;
    return $s;
}

my @DOMAINS = qw(example.com example.org mail.example.net corp.example co.uk.example);

sub email {
    my $local = lc str_from(3 + rnd(10), @ALNUM);
    $local .= pick('.', '_', '+', '-') . lc str_from(1 + rnd(6), @ALNUM) if rnd(2);
    return $local . '@' . pick(@DOMAINS);
}

# Code point pools for random UTF-8 text: 2-, 3- and 4-byte sequences.
my @POOLS = (
    [ 0x00C0, 0x00D6 ], [ 0x00D8, 0x00F6 ], [ 0x00F8, 0x00FF ],    # Latin-1 letters
    [ 0x0100, 0x017F ],                                            # Latin Extended-A
    [ 0x0391, 0x03A1 ], [ 0x03A3, 0x03C9 ],                        # Greek
    [ 0x0410, 0x044F ],                                            # Cyrillic
    [ 0x3041, 0x3096 ],                                            # Hiragana
    [ 0x4E00, 0x9FFF ],                                            # CJK unified
    [ 0xAC00, 0xD7A3 ],                                            # Hangul
    [ 0x1F300, 0x1F5FF ], [ 0x1F600, 0x1F64F ], [ 0x1F680, 0x1F6C5 ],  # emoji
    [ 0x20000, 0x2A6DF ],                                          # CJK ext B
);

sub rand_char {
    my $p = pick(@POOLS);
    return chr($p->[0] + rnd($p->[1] - $p->[0] + 1));
}

sub utf8_random_id {
    my $n = 1 + rnd(12);
    my $s = '';
    for (1 .. $n) { $s .= rnd(3) ? rand_char() : pick(@ALNUM); }
    return u($s);
}

# Exactly $len bytes of mixed ASCII / multi-byte UTF-8 (never splits a char).
sub utf8_exact {
    my ($len) = @_;
    my $b = '';
    while (1) {
        my $c = rnd(2) ? u(rand_char()) : pick(@ALNUM);
        last if length($b) + length($c) > $len;
        $b .= $c;
    }
    $b .= pick(@ALNUM) while length($b) < $len;
    return $b;
}

sub ascii_exact { my ($len, @set) = @_; return str_from($len, @set ? @set : @ALNUM); }

# ---------------------------------------------------------------------------
# Fixed data
# ---------------------------------------------------------------------------

my @FLAG_SALTS = qw(
    users-read users-write checkout.v2 search.new-ranker billing_v3
    orders-api payments.refunds.v2 a x1 feature_flag_with_a_rather_long_name.2024
);
my @UTF8_SALTS = map { u($_) } (
    "funci\x{F3}n-nueva",                         # Spanish
    "\x{3C7}\x{3B1}\x{3C1}\x{3B1}\x{3BA}\x{3C4}\x{3B7}\x{3C1}\x{3B9}\x{3C3}\x{3C4}\x{3B9}\x{3BA}\x{3CC}",  # Greek
    "\x{444}\x{438}\x{447}\x{430}-\x{43A}\x{43E}\x{440}\x{437}\x{438}\x{43D}\x{430}",                       # Cyrillic
    "\x{529F}\x{80FD}\x{5F00}\x{5173}",           # CJK
    "\x{1F6A9}flag",                              # emoji (4-byte)
);
my @PUNCT_SALTS = ('ns:flag', 'team/flag', 'flag with spaces', 'q"uote', 'back\\slash');

my @UTF8_IDS = map { u($_) } (
    "Jos\x{E9}", "Zo\x{EB}", "\x{C6}r\x{F8}sk\x{F8}bing", "stra\x{DF}e", "Fran\x{E7}ois M\x{FC}ller",
    "\x{C5}sa \x{D6}berg", "\x{141}\x{F3}d\x{17A}", "na\x{EF}ve caf\x{E9}",
    "e\x{301}",                                    # e + combining acute (decomposed)
    "\x{395}\x{3BB}\x{3BB}\x{3B7}\x{3BD}\x{3B9}\x{3BA}\x{3AC}", "\x{3B1}\x{3B2}\x{3B3}",
    "\x{41F}\x{440}\x{438}\x{432}\x{435}\x{442}", "\x{43F}\x{43E}\x{43B}\x{44C}\x{437}\x{43E}\x{432}\x{430}\x{442}\x{435}\x{43B}\x{44C}",
    "\x{7528}\x{6237}", "\x{6771}\x{4EAC}", "\x{30E6}\x{30FC}\x{30B6}\x{30FC}", "\x{C0AC}\x{C6A9}\x{C790}",
    "\x{1F600}", "\x{1F44D}\x{1F3FD}", "\x{1F680}user", "user\x{1F680}", "\x{1F468}\x{200D}\x{1F469}\x{200D}\x{1F467}",
    "\x{20BB7}\x{91CE}\x{5BB6}",                   # 4-byte CJK ext B
    "\x{FFFD}", "\x{2603}", "\x{20AC}100",
    "mixed-\x{E9}-\x{3B1}-\x{434}-\x{4E2D}-\x{1F642}",
);

my @PUNCT_IDS = (
    'john doe', 'a b c', 'user:123', 'a:b:c', ':leading-colon', 'trailing-colon:', '::',
    '/path/to/user', 'https://example.com/u/42', 'say "hi"', '"', '\\', '\\\\',
    'C:\\Users\\alice', 'back\\slash', '\\n', '\\t', 'quote\'s', '#hash', 'a#b',
    'key=value&x=1', '100%', '{"id":1}', '[1,2,3]', '<tag>', '!@#$%^&*()_+-=',
    '~`|;,.?', 'semi;colon', 'comma,separated', 'tab\\tlike', 'x y:z/w"v\\u',
    'email with space@example.com', 'O\'Brien', 'a|b', 'space  double',
);

my @KNOWN_IDS = qw(hello 0 1 42 user-1 alice bob 12345 00000 abc);

# ---------------------------------------------------------------------------
# Row collection
# ---------------------------------------------------------------------------

my @rows;
my %seen;

sub add {
    my ($salt, $uid) = @_;
    for my $f ($salt, $uid) {
        die "internal: control character in field\n" if $f =~ /[\x00-\x1F\x7F]/;
        # C1 controls U+0080..U+009F are encoded as C2 80..C2 9F
        die "internal: C1 control in field\n" if $f =~ /\xC2[\x80-\x9F]/;
    }
    die "internal: salt starts with '#'\n" if $salt =~ /^#/;
    return if $seen{"$salt\t$uid"}++;
    push @rows, [ $salt, $uid ];
}

# 1. Known / simple values.
for my $salt ('', @FLAG_SALTS[0 .. 2]) {
    add($salt, $_) for @KNOWN_IDS;
}

# 2. Typical id shapes under typical flag salts and under the empty salt.
my @gens = (\&numeric_id, \&objectid, \&uuid, \&email);
for my $salt ('', '', @FLAG_SALTS) {        # empty salt weighted double
    for my $g (@gens) {
        add($salt, $g->()) for 1 .. 20;
    }
}

# 3. UTF-8 ids (fixed list + random) under empty, flag and UTF-8 salts.
for my $salt ('', @FLAG_SALTS[0 .. 2], @UTF8_SALTS) {
    add($salt, $_) for @UTF8_IDS;
    add($salt, utf8_random_id()) for 1 .. 12;
}

# 4. UTF-8 salts with ordinary ids.
for my $salt (@UTF8_SALTS) {
    add($salt, $_->()) for (@gens) x 4;
}

# 5. Punctuation, spaces, quotes, backslashes.
for my $salt ('', @FLAG_SALTS[0 .. 2], @PUNCT_SALTS) {
    add($salt, $_) for @PUNCT_IDS;
    add($salt, ascii_exact(1 + rnd(30), @PRINT)) for 1 .. 6;
}

# 6. Every total input length 1..64 bytes (len(salt) + 1 + len(uid)), with
#    several salts and several contents per length, so every murmur3 tail
#    length 0..3 and every block count 0..16 is exercised many times.
#    Total length 1 is only reachable with empty salt and empty user id.
add('', '');
for my $salt ('', 'a', 'ab', 'users-read', 'checkout.v2', $UTF8_SALTS[0], $UTF8_SALTS[4]) {
    my $base = length($salt) + 1;
    for my $total ($base + 1 .. 64) {
        my $n = $total - $base;
        add($salt, ascii_exact($n));
        add($salt, ascii_exact($n, 0 .. 9));
        add($salt, utf8_exact($n));
        add($salt, ascii_exact($n, @PRINT)) if $salt eq '';
    }
}

# 7. Long ids of exact byte lengths.
for my $len (200, 255, 256, 1000, 4096) {
    for my $salt ('', 'users-read', $UTF8_SALTS[3]) {
        add($salt, ascii_exact($len));
        add($salt, utf8_exact($len));
    }
    add('checkout.v2', ascii_exact($len, @PRINT));
}

# 8. Bulk random mix to round things out.
my @all_salts = ('', @FLAG_SALTS, @UTF8_SALTS, @PUNCT_SALTS);
my @all_gens = (@gens, \&utf8_random_id, sub { ascii_exact(1 + rnd(40), @PRINT) });
add(pick(@all_salts), pick(@all_gens)->()) for 1 .. 300;

# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

print "# cutover bucket test vectors - generated by tests/vectors/gen-buckets.pl; do not edit\n";
print "# regenerate: perl tests/vectors/gen-buckets.pl > tests/vectors/buckets.tsv\n";
print "# format: salt<TAB>user_id<TAB>bucket  (UTF-8; salt may be empty; split on TAB only)\n";
print "# bucket = murmur3_x86_32(salt \":\" user_id, seed 0) mod $BUCKETS\n";
print "# hash source: Digest::MurmurHash3::PurePerl (independent of the C code)\n";
printf "# murmur3_32(\"hello\", 0) = %u\n", hash_bytes('hello');
printf "# rows: %d\n", scalar @rows;

for my $r (@rows) {
    my ($salt, $uid) = @$r;
    print join("\t", $salt, $uid, bucket($salt, $uid)), "\n";
}
