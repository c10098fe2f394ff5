"""The rule-based reading of a customer's emailed reply: word lists per intent in seven languages.

It is the local stand-in of the Claude reply classifier (`blocks.anthropic`) and the tasks' own quick reading, so it
lives in blocks/ (which tasks may import) and in a module of its own, importing no vendor SDK.

How a text is read: every pattern below is matched; where matches overlap, the longest wins ("not interested" over
"interested", "agora não" over "não"); a yes-phrase with a negation just before it in the same clause ("don't think
that sounds good") counts for nothing. Then:

- an unsubscribe phrase decides: no;
- a deferral ("not now", "next quarter", "after our budget review") makes it maybe, whatever else was said;
- only yes-phrases: yes; only no-phrases: no; both, or none: unclear (a person reads it).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from blocks.interfaces import ReplyIntent

#: The longest text read (the reply's new words come first; beyond this it is quoted text or a signature).
MAX_TEXT = 4000

Kind = Literal["stop", "neutral", "yes", "no", "maybe"]

#: Patterns per kind (lower case, matched on a normalised text with word boundaries around each).
#: "stop" asks for no more email; "neutral" phrases mask what they contain ("no problem" is not a no, and text that
#: tells a classifier what to answer is not the customer's intent).
# fmt: off
RULES: dict[Kind, list[str]] = {
    "stop": [
        # en
        r"unsubscribe", r"opt(?:ed)?[- ]out", r"remove (?:me|us|my (?:e-?mail|address))", r"take (?:me|us) off",
        r"(?:stop|quit) (?:e-?mailing|contacting|sending|writing|spamming)",
        r"(?:do not|don't|never) (?:e-?mail|contact|write to) (?:me|us)",
        # de
        r"abmelden", r"austragen", r"keine (?:e-?mails?|mails?|werbung|nachrichten) mehr",
        r"nicht mehr (?:kontaktieren|anschreiben|schreiben)",
        # fr
        r"d[ée]sabonne\w*", r"d[ée]sinscri\w*", r"ne plus (?:m'|nous )?(?:[ée]crire|contacter|envoyer)",
        r"retirez[- ](?:moi|nous)",
        # es
        r"dar(?:me|nos) de baja", r"dejen? de (?:enviar|escribir)\w*", r"no (?:me|nos) escriban",
        # nl
        r"afmelden", r"uitschrijven", r"geen (?:e-?mails?|mails?) meer",
        # it
        r"disiscriv\w*", r"cancellatemi", r"non (?:scrivetemi|contattatemi) più",
        # pt
        r"descadastr\w*", r"parem de (?:enviar|mandar)\w*",
    ],
    "neutral": [
        r"no (?:problem|problems|worries|worry|doubt|rush|hurry|pressure|matter|idea)", r"no later than",
        r"yes or no", r"whether or not", r"make sure",
        r"ignore (?:all |any |the )?(?:previous|prior|above|earlier) instructions",
        r"(?:answer|respond with|reply with|say only|output|return|classify (?:this|it|the \w+) as|mark (?:this|it) as|"
        r"label (?:this|it) as|the answer is|intent is)\s*[\"'“”«]?\s*(?:yes|no|maybe|unclear|ja|oui|sí|sim)",
        r"kein problem", r"pas de (?:probl[èe]me|souci)", r"no hay problema", r"geen probleem", r"nessun problema",
    ],
    "yes": [
        # en
        r"yes", r"yeah", r"yep", r"sure", r"absolutely", r"definitely", r"of course", r"go ahead", r"tell me more",
        r"sounds (?:good|great|interesting|perfect|fine)", r"good idea", r"makes sense", r"interested",
        r"let'?s (?:talk|chat|meet|do it|go|discuss|connect|schedule|book|set (?:it|something|a call|a time) up)",
        r"(?:book|schedule|set up|arrange|organi[sz]e) (?:a |the |an? \w+ )?(?:call|meeting|demo|chat|time)",
        r"(?:happy|glad|keen) to (?:talk|chat|discuss|meet|hear more|upgrade|move|proceed)",
        r"(?:monday|tuesday|wednesday|thursday|friday|tomorrow)(?: [\w:]+){0,3} (?:works|is (?:good|fine)|suits)",
        r"works for (?:me|us)", r"sign (?:us|me) up", r"count (?:us|me) in", r"call me", r"give (?:me|us) a call",
        r"send (?:me |us )?(?:a |an |the |over )?(?:quote|proposal|contract|invite|calendar invite|pricing|offer)",
        r"(?:i'?d|we'?d) (?:like|love) to (?:upgrade|move|talk|chat|learn|hear|see|discuss|proceed|go ahead)",
        r"(?:jump|hop|get) on a call", r"keen to (?:explore|learn|hear|talk|discuss)", r"(?:the )?next steps?",
        r"send (?:me |us )?(?:some |a few )?(?:times|slots|dates)", r"(?:prepare|send) the paperwork",
        # de
        r"ja", r"gerne?", r"klingt (?:gut|super|interessant|spannend)", r"einverstanden", r"machen wir",
        r"(?:lassen sie|lass) uns (?:sprechen|reden|telefonieren|treffen)", r"passt (?:gut|mir|uns)",
        r"(?:montag|dienstag|mittwoch|donnerstag|freitag|morgen)(?: \w+){0,3} (?:passt|geht)",
        r"(?:termin|telefonat|anruf) (?:vereinbaren|ausmachen|buchen)", r"interessiert",
        # fr
        r"oui", r"avec plaisir", r"volontiers", r"[çc]a (?:me|nous) va", r"d'accord", r"parlons[- ]en",
        r"[çc]a marche", r"bonne id[ée]e", r"appelez[- ]moi", r"int[ée]ress[ée]e?s?",
        r"envoyez[- ](?:moi|nous) (?:une |la |votre )?(?:proposition|offre|devis)",
        r"(?:lundi|mardi|mercredi|jeudi|vendredi|demain)(?: \w+){0,3} (?:me |nous )?(?:convient|va)",
        # es ("si" without its accent is "if")
        r"sí", r"claro", r"me parece bien", r"hablemos", r"de acuerdo", r"me interesa", r"adelante", r"agendemos",
        r"(?:estoy|estamos) interesad[oa]s?",
        r"(?:lunes|martes|miércoles|jueves|viernes|mañana)(?: \w+){0,3} (?:me |nos )?(?:va|viene) bien",
        # nl
        r"graag", r"klinkt goed", r"laten we (?:bellen|praten|afspreken)", r"akkoord",
        r"(?:maandag|dinsdag|woensdag|donderdag|vrijdag|morgen)(?: \w+){0,3} (?:past|kan|werkt)",
        # it
        r"sì", r"volentieri", r"va bene", r"certo", r"sentiamoci", r"mi interessa", r"d'accordo", r"perfetto",
        r"(?:sono|siamo) interessat[ioe]",
        # pt
        r"sim", r"vamos conversar", r"parece (?:bom|ótimo)", r"combinado", r"tenho interesse", r"com certeza",
        r"(?:estou|estamos) interessad[oa]s?",
    ],
    "no": [
        # en
        r"no", r"nope", r"not (?:\w+ ){0,2}interested", r"no (?:longer )?interest(?:ed)?", r"no,? thank(?:s| you)",
        r"(?:we|i)(?:'ll| will) pass", r"pass on this", r"not (?:a )?(?:good |great )?fit", r"not for (?:us|me)",
        r"(?:don't|do not|doesn't|does not) (?:really )?(?:need|want)", r"no need",
        r"(?:happy|fine|good|satisfied) with (?:our|my|the) current", r"declin(?:e|ing)",
        r"(?:not going to|won't|will not) (?:upgrade|move|proceed|change)", r"too expensive", r"can'?t afford",
        r"not (?:looking|planning) to", r"(?:absolutely|definitely|certainly|of course|surely) not", r"not at all",
        r"(?:just|already|recently) renewed", r"(?:moving|switching|switched|moved) to (?:a |another )?competitor",
        # de
        r"nein", r"kein(?:e|en)? interesse", r"nicht interessiert", r"kein bedarf", r"brauchen (?:wir|ich) nicht",
        r"(?:wir|ich) verzichten", r"zufrieden mit", r"(?:gerade|bereits|schon) (?:erst )?verlängert",
        # fr
        r"non", r"non,? merci", r"pas (?:\w+ )?int[ée]ress[ée]e?s?", r"pas besoin", r"sans fa[çc]on",
        # es
        r"no (?:me|nos) interesa", r"no (?:estoy|estamos) interesad[oa]s?", r"no,? gracias", r"no necesitamos",
        # nl
        r"nee", r"geen interesse", r"niet ge[ïi]nteresseerd", r"nee,? bedankt", r"hoeft niet", r"niet nodig",
        # it
        r"non (?:sono|siamo) interessat[ioe]", r"non (?:ci|mi) interessa", r"no,? grazie",
        # pt
        r"n[ãa]o", r"n[ãa]o,? obrigad[oa]", r"n[ãa]o (?:tenho|temos) interesse",
        r"n[ãa]o (?:estou|estamos) interessad\w*",
    ],
    "maybe": [
        # en
        r"maybe", r"perhaps", r"later", r"not (?:right )?now", r"not (?:just )?yet", r"not sure",
        r"not at (?:the|this) (?:moment|time|point)", r"for the time being", r"on hold", r"down the (?:road|line)",
        r"next (?:quarter|year|fiscal year|budget(?: cycle)?)", r"(?:in|after|until) q[1-4]",
        r"in (?:a few|a couple of|two|three|six|\d+) (?:months|quarters)",
        r"(?:after|once|until) (?:the |our )?budget", r"budget (?:review|approval|cycle|is approved)",
        r"circle back", r"revisit", r"reach out (?:again )?(?:in|later|next)", r"think about it",
        r"(?:need|have|want) (?:some )?time to think", r"let me (?:think|check|discuss)", r"check with (?:my|our)",
        r"(?:discuss|talk) (?:it |this )?(?:with|to) (?:my|our)",
        r"keep (?:me|us) posted", r"ping (?:me|us) (?:in|after|next)", r"run it (?:past|by)",
        r"(?:in|after|until) (?:january|february|march|april|june|july|august|september|october|november|december"
        r"|the summer|summer|the new year|autumn|the fall|spring|winter)",
        # de
        r"vielleicht", r"sp[äa]ter", r"(?:im moment|momentan|derzeit|zurzeit|aktuell|jetzt) (?:noch )?nicht",
        r"nicht jetzt", r"noch nicht", r"(?:im )?n[äa]chste[nms]? (?:quartal|jahr|gesch[äa]ftsjahr)",
        r"nach (?:der|dem|unserer?) budget\w*", r"intern (?:kl[äa]ren|abstimmen|besprechen)",
        # fr
        r"peut-[êe]tre", r"plus tard", r"pas (?:maintenant|pour (?:le moment|l'instant)|tout de suite|encore)",
        r"(?:le )?trimestre prochain", r"l'ann[ée]e prochaine", r"apr[èe]s (?:le|notre) budget", r"r[ée]fl[ée]chir",
        # es
        r"quiz[áa]s?", r"tal vez", r"m[áa]s adelante", r"ahora no", r"pr[óo]ximo (?:trimestre|a[ñn]o)",
        r"el a[ñn]o que viene", r"todav[íi]a no", r"a[úu]n no", r"despu[ée]s del (?:presupuesto|verano)",
        # nl
        r"misschien", r"nu (?:even )?niet", r"op dit moment niet", r"momenteel niet", r"volgend (?:kwartaal|jaar)",
        r"nog niet",
        # it
        r"forse", r"pi[ùu] (?:avanti|tardi)", r"non (?:ora|adesso|per ora)", r"prossimo (?:trimestre|anno)",
        r"non ancora",
        # pt
        r"talvez", r"mais (?:tarde|para frente|adiante)", r"agora n[ãa]o", r"pr[óo]ximo (?:trimestre|ano)",
        r"ano que vem", r"ainda n[ãa]o",
    ],
}
# fmt: on

#: Words that negate a yes-phrase following them in the same clause.
NEGATIONS = frozenset(
    "not no never don't dont doesn't isn't aren't won't wouldn't can't nicht kein keine nie pas ne jamais "
    "nunca niet geen nooit non mai não nao".split()
)
_CLAUSE_BREAK = re.compile(r"[.!?;,:\n()\u2013\u2014]| - ")
_WORD = re.compile(r"[\w']+")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})


@dataclass(frozen=True)
class _Match:
    kind: Kind
    start: int
    end: int


def _compile(pattern: str) -> re.Pattern[str]:
    # (?<!\w) and (?!\w) rather than \b: patterns may start or end with a non-word character
    return re.compile(rf"(?<![\w']){pattern}(?![\w'])", re.IGNORECASE)


COMPILED: list[tuple[Kind, re.Pattern[str]]] = [(kind, _compile(p)) for kind, ps in RULES.items() for p in ps]


def normalise(text: str) -> str:
    """Lower case, compatibility forms folded (NFKC), one kind of apostrophe, runs of spaces as one."""
    text = unicodedata.normalize("NFKC", text[:MAX_TEXT]).translate(_APOSTROPHES).lower()
    return re.sub(r"[ \t\u00a0]+", " ", text)


def _negated(text: str, start: int) -> bool:
    clause = _CLAUSE_BREAK.split(text[:start])[-1]
    return any(word in NEGATIONS for word in _WORD.findall(clause)[-3:])


def matches(text: str) -> list[_Match]:
    """The phrases found in `text` (normalised), overlaps resolved in favour of the longest."""
    found = [_Match(kind, m.start(), m.end()) for kind, pattern in COMPILED for m in pattern.finditer(text)]
    kept: list[_Match] = []
    for match in sorted(found, key=lambda m: (m.start - m.end, m.start)):
        if all(match.end <= k.start or match.start >= k.end for k in kept):
            kept.append(match)
    # a negation inside a neutral phrase ("no problem, Tuesday works") negates nothing
    unmasked = text
    for m in kept:
        if m.kind == "neutral":
            unmasked = unmasked[: m.start] + " " * (m.end - m.start) + unmasked[m.end :]
    return [m for m in kept if not (m.kind == "yes" and _negated(unmasked, m.start))]


def classify_rules(text: str) -> ReplyIntent:
    """Yes, no, maybe or unclear, from the phrases the text holds (see the module's docstring)."""
    kinds = {m.kind for m in matches(normalise(text))} - {"neutral"}
    if "stop" in kinds:
        return ReplyIntent.NO
    if "maybe" in kinds:
        return ReplyIntent.MAYBE
    if kinds == {"yes"}:
        return ReplyIntent.YES
    if kinds == {"no"}:
        return ReplyIntent.NO
    return ReplyIntent.UNCLEAR


class RuleBasedReplyClassifier:
    """Reads a reply with word lists (en, de, fr, es, nl, it, pt); the stand-in without an Anthropic block."""

    name = "rule-based"

    def __repr__(self) -> str:
        return "RuleBasedReplyClassifier(languages: en, de, fr, es, nl, it, pt)"

    def classify(self, text: str) -> ReplyIntent:
        return classify_rules(text)
