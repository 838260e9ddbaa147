/**
 * Characters that draw nothing and are no format character (those are \p{Cf}, named by category where a rule needs
 * them): the other default-ignorable code points (Unicode's Default_Ignorable_Code_Point; PRECIS disallows them all,
 * RFC 8264 §9.13): letters and marks that show as nothing, as the Hangul fillers (U+3164, U+115F), the combining
 * grapheme joiner, Khmer's inherent vowels and the variation selectors. In an address, an account name or a log line
 * `c<U+3164>eo` reads as `ceo` to a person while every string compare sees another name. ZWNJ and ZWJ are format
 * characters (each rule decides about them), and a variation selector stays where it selects an emoji's presentation
 * (after a pictograph, or a keycap's before U+20E3).
 *
 * A pattern's source, for a `u` (or `v`) regular expression that has its own alternatives beside it: one definition
 * for the envelope (envelope-path.ts), account names (certificate-identity.ts) and logged client text (logger.ts).
 */
export const DRAWS_NOTHING = String.raw`(?![\u200c\u200d\ufe0e\ufe0f])\p{Default_Ignorable_Code_Point}|(?<!\p{Extended_Pictographic})[\ufe0e\ufe0f](?!\u20e3)`;
