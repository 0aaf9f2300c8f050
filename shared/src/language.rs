//! Language detection for inbound tenant SMS (English, Spanish, Portuguese).
//!
//! Tenant messages are mostly one or two words ("Sí", "Obrigado", "ok"), far too short for
//! n-gram models, so detection is a small hand-weighted lexicon plus a few character cues:
//!
//! * Every word is lowercased, letter runs of three or more are cut to two ("siii" -> "sii"),
//!   and it is looked up as written, then without accents ("não" -> "nao"), then with every run
//!   cut to one ("sii" -> "si"). A hit adds the word's weight for each language; words shared
//!   by several languages ("no", "claro", "de", "que") carry weight for each of them, so only
//!   context separates them.
//! * Words missing from the lexicon still give weak evidence through spelling: ñ, ã/õ, ç, â/ê/ô,
//!   nh/lh, -ción/-ção, -ing/-tion, -aram/-aron, and so on. `¿` and `¡` count for Spanish.
//! * Links, e-mail addresses, numbers and emoji are ignored; "ok"/"okay" weigh nothing.
//!
//! Scores are treated as log-odds: the confidence is the softmax probability of the winner,
//! so it grows with both the margin and the amount of evidence ("Gracias" ≈ 0.9, "No" ≈ 0.4,
//! a full sentence ≈ 0.99). Ties go to English, then Spanish, then Portuguese.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A language the platform can talk to tenants in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    English,
    Spanish,
    Portuguese,
}

impl Language {
    /// Score-array order; also the tie-break order (English is the platform default).
    const ALL: [Language; 3] = [Language::English, Language::Spanish, Language::Portuguese];

    /// ISO 639-1 code, as stored in the database.
    pub fn code(self) -> &'static str {
        match self {
            Self::English => "en",
            Self::Spanish => "es",
            Self::Portuguese => "pt",
        }
    }

    /// Parses a code written by [`Language::code`] (ASCII case-insensitive); anything else is `None`.
    pub fn from_code(s: &str) -> Option<Language> {
        Self::ALL
            .into_iter()
            .find(|l| l.code().eq_ignore_ascii_case(s))
    }
}

/// The detected language of one text and how sure the detector is (0.0..=1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub language: Language,
    pub confidence: f32,
}

/// Highest confidence ever reported, so one later long message of another language (which also
/// reaches the cap) can still take over a stored language (see [`merge`]).
const MAX_CONFIDENCE: f32 = 0.99;
/// Minimum gap between the best and worst language score to report anything at all: below it
/// the text carries no usable evidence ("ok", "a", a name).
const MIN_EVIDENCE: f32 = 0.5;
/// Longest word considered, in characters; longer runs of letters are not words we know.
const MAX_WORD: usize = 24;
/// Words scored per message. Far more than needed for a confident answer; bounds the work on
/// pathological input.
const MAX_WORDS: usize = 200;
/// Cap on the evidence from the spelling of one unknown word, so no word outweighs real words.
const MAX_CUE: f32 = 2.0;

/// Detects the language of `text`.
///
/// Returns `None` when the text carries no language evidence: empty, whitespace, digits, emoji,
/// links, or only language-neutral words like "ok". Never panics.
pub fn detect(text: &str) -> Option<Detection> {
    let lexicon = lexicon();
    let mut scores = [0.0f32; 3];
    let mut words = 0usize;
    let mut inverted_marks = 0u32;
    let mut word = Word::new();

    'text: for chunk in text.split_whitespace() {
        if is_link(chunk) {
            continue;
        }
        // A trailing space ends the chunk's last word like any other separator.
        for c in chunk.chars().chain(std::iter::once(' ')) {
            if c.is_alphabetic() {
                word.push(c);
            } else if ('\u{300}'..='\u{36f}').contains(&c) {
                // Decomposed accents ("na\u{303}o"): merge into the letter they follow.
                word.combine(c);
            } else if matches!(c, '\'' | '’' | '`' | '´') && !word.is_empty() {
                // Contractions are one word without the apostrophe: "can't" -> "cant", "I'm" -> "im".
            } else {
                if matches!(c, '¿' | '¡') {
                    inverted_marks += 1;
                }
                if !word.is_empty() {
                    word.score(lexicon, &mut scores);
                    word.clear();
                    words += 1;
                    if words >= MAX_WORDS {
                        break 'text;
                    }
                }
            }
        }
    }
    // ¿ and ¡ are exclusively Spanish; two are as telling as it gets.
    scores[1] += 2.0 * inverted_marks.min(2) as f32;

    decide(scores)
}

/// Turns per-language scores into a detection: winner by score (ties in [`Language::ALL`]
/// order), confidence = the winner's softmax probability, capped at [`MAX_CONFIDENCE`].
fn decide(scores: [f32; 3]) -> Option<Detection> {
    let max = scores.iter().copied().fold(f32::MIN, f32::max);
    let min = scores.iter().copied().fold(f32::MAX, f32::min);
    if !max.is_finite() || max - min < MIN_EVIDENCE {
        return None;
    }
    let mut best = 0;
    for i in 1..3 {
        if scores[i] > scores[best] {
            best = i;
        }
    }
    // Subtracting the max keeps exp() in range whatever the scores.
    let total: f32 = scores.iter().map(|s| (s - max).exp()).sum();
    let confidence = (1.0 / total).clamp(0.0, MAX_CONFIDENCE);
    Some(Detection {
        language: Language::ALL[best],
        confidence,
    })
}

/// The value to store as a conversation's (or tenant's) language after a new message.
///
/// Rule (the PRD's "most recent message with higher confidence wins"):
/// * no stored value, or a stored confidence that is not a finite number in 0..=1 -> `new`;
/// * same language -> the one with the higher confidence (the stored one on a tie), so a
///   language proven once by a long message is not weakened by later one-word replies;
/// * different language -> `new` when `new.confidence >= current.confidence`, else `current`.
///
/// So a weak guess ("No" ≈ 0.4) never overwrites a strong detection, while a strong message in
/// another language replaces an older detection of equal or lower confidence. Because
/// [`detect`] caps confidence at 0.99, one full sentence in the new language is always enough
/// to switch. When nothing changes the stored value is returned unchanged (bit for bit), so
/// callers can compare with `==` to skip a write.
pub fn merge(current: Option<Detection>, new: Detection) -> Detection {
    let Some(current) = current else {
        return new;
    };
    if !(0.0..=1.0).contains(&current.confidence) {
        return new;
    }
    let replace = if current.language == new.language {
        new.confidence > current.confidence
    } else {
        new.confidence >= current.confidence
    };
    if replace { new } else { current }
}

/// One word being read: lowercase, apostrophes dropped, letter runs cut to two.
struct Word {
    chars: [char; MAX_WORD],
    len: usize,
    /// Letters seen before run-cutting (tells "kkkk" from "k").
    raw_len: usize,
    overflow: bool,
}

impl Word {
    fn new() -> Self {
        Word {
            chars: ['\0'; MAX_WORD],
            len: 0,
            raw_len: 0,
            overflow: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.raw_len == 0
    }

    fn clear(&mut self) {
        self.len = 0;
        self.raw_len = 0;
        self.overflow = false;
    }

    fn push(&mut self, c: char) {
        for c in c.to_lowercase() {
            self.raw_len += 1;
            if self.len >= 2 && self.chars[self.len - 1] == c && self.chars[self.len - 2] == c {
                continue;
            }
            if self.len == MAX_WORD {
                self.overflow = true;
                return;
            }
            self.chars[self.len] = c;
            self.len += 1;
        }
    }

    /// Applies a combining accent to the last letter; unknown pairs keep the bare letter.
    fn combine(&mut self, mark: char) {
        if self.len > 0 {
            let last = &mut self.chars[self.len - 1];
            *last = compose(*last, mark);
        }
    }

    /// Adds this word's evidence to `scores`.
    fn score(&self, lexicon: &HashMap<&'static str, [f32; 3]>, scores: &mut [f32; 3]) {
        if self.overflow || self.len == 0 {
            return;
        }
        let chars = &self.chars[..self.len];

        // As written (accents kept): "sí", "tá", "é", "pagué".
        let mut exact_buf = [0u8; MAX_WORD * 4];
        let mut n = 0;
        for &c in chars {
            n += c.encode_utf8(&mut exact_buf[n..]).len();
        }
        let exact = std::str::from_utf8(&exact_buf[..n]).unwrap_or("");
        if let Some(w) = lexicon.get(exact) {
            add(scores, *w);
            return;
        }

        // Without accents; only for words written entirely in (accented) Latin letters.
        let mut folded_buf = [0u8; MAX_WORD];
        for (i, &c) in chars.iter().enumerate() {
            match fold(c) {
                Some(b) => folded_buf[i] = b,
                None => return,
            }
        }
        let folded = std::str::from_utf8(&folded_buf[..self.len]).unwrap_or("");
        if folded != exact
            && let Some(w) = lexicon.get(folded)
        {
            add(scores, *w);
            return;
        }

        // Every run cut to one: "yess" -> "yes", "obrigadaa" -> "obrigada", "kk" -> "k".
        let mut single_buf = [0u8; MAX_WORD];
        let mut m = 0;
        for &b in folded.as_bytes() {
            if m == 0 || single_buf[m - 1] != b {
                single_buf[m] = b;
                m += 1;
            }
        }
        let single = std::str::from_utf8(&single_buf[..m]).unwrap_or("");
        // Before the run-cut lookup, which would read "kkkk" as the neutral "k".
        if let Some(w) = laugh(single, self.raw_len) {
            add(scores, w);
            return;
        }
        if single != folded
            && let Some(w) = lexicon.get(single)
        {
            add(scores, *w);
            return;
        }

        let mut cue = spelling_cues(chars, folded);
        for v in &mut cue {
            *v = v.min(MAX_CUE);
        }
        add(scores, cue);
    }
}

fn add(scores: &mut [f32; 3], w: [f32; 3]) {
    for (s, w) in scores.iter_mut().zip(w) {
        *s += w;
    }
}

/// Laughter is written differently in each language: "jajaja" (es), "kkkk"/"rsrs" (pt),
/// "haha" (en, but used everywhere, so weak).
fn laugh(single: &str, raw_len: usize) -> Option<[f32; 3]> {
    let b = single.as_bytes();
    if b == b"k" && raw_len >= 3 {
        return Some([0.0, 0.0, 2.5]);
    }
    if b.len() < 4 {
        return None;
    }
    let alternates = |unit: &[u8; 2]| b.iter().enumerate().all(|(i, &c)| c == unit[i % 2]);
    if alternates(b"ja") || alternates(b"je") || alternates(b"ji") {
        Some([0.0, 2.5, 0.0])
    } else if alternates(b"rs") {
        Some([0.0, 0.0, 2.5])
    } else if alternates(b"ha") || alternates(b"he") {
        Some([1.0, 0.0, 0.0])
    } else {
        None
    }
}

/// Weak evidence from the spelling of a word that is not in the lexicon (a typo, a verb form,
/// a noun we did not list). `chars` keeps accents, `folded` is the same word without them.
fn spelling_cues(chars: &[char], folded: &str) -> [f32; 3] {
    let mut w = [0.0f32; 3];
    let (en, es, pt) = (0, 1, 2);
    for &c in chars {
        match c {
            'ñ' => w[es] += 2.0,
            'ã' | 'õ' => w[pt] += 2.0,
            'ç' | 'â' | 'ê' | 'ô' => w[pt] += 1.5,
            'à' => w[pt] += 1.0,
            _ => {}
        }
    }
    if folded.is_empty() {
        // Nothing more to read (and guards the indexing below).
        return w;
    }
    let bytes = folded.as_bytes();
    let len = bytes.len();
    let has = |s: &str| folded.contains(s);
    let ends = |s: &str| len > s.len() && folded.ends_with(s);

    // Letter combinations one language uses and the others (nearly) never do.
    if has("nh") || has("lh") {
        w[pt] += 1.2;
    }
    if has("th") || has("w") || has("k") || has("sh") {
        w[en] += 1.0;
    }
    if has("ee") || has("oo") {
        w[en] += 0.6;
    }
    if has("ll") {
        w[es] += 0.5;
    }
    if has("ss") {
        w[pt] += 0.5;
        w[en] += 0.3;
    }
    // "ie"/"ue" diphthongs are Spanish ("tiene", "puede"); "que"/"gue" are everywhere.
    if has("ie")
        || bytes
            .windows(2)
            .enumerate()
            .any(|(i, p)| p == b"ue" && i > 0 && !matches!(bytes[i - 1], b'q' | b'g'))
    {
        w[es] += 0.4;
    }

    // Endings: suffixes and verb forms.
    if ends("cion") || ends("ciones") || ends("aron") || ends("ieron") || ends("dad") {
        w[es] += 1.5;
    }
    if ends("aba") || ends("aban") || ends("abas") {
        w[es] += 1.2;
    }
    if ends("aje") || (ends("ero") && !ends("eiro")) || ends("ito") || ends("ita") {
        w[es] += 0.6;
    }
    if ends("cao") || ends("coes") || ends("aram") || ends("eram") || ends("iram") {
        w[pt] += 1.5;
    }
    if ends("ava")
        || ends("avam")
        || ends("dade")
        || ends("agem")
        || ends("eiro")
        || ends("eira")
        || ends("oes")
    {
        w[pt] += 1.2;
    }
    if len >= 4 && (ends("ei") || ends("ou")) {
        w[pt] += 1.0;
    }
    if ends("ing") || ends("tion") || ends("ness") || ends("ment") {
        w[en] += 1.2;
    }
    if ends("ly") || ends("ed") {
        w[en] += 0.8;
    }
    if chars.last() == Some(&'ó') {
        // Spanish preterite: "llegó", "arregló".
        w[es] += 1.0;
    }
    match bytes[len - 1] {
        // Spanish words never end in -m; Portuguese ones often do ("bem", "viagem").
        b'm' => {
            w[pt] += 0.8;
            w[en] += 0.4;
        }
        // Native Spanish and Portuguese words end in a vowel or l, n, r, s, z, d, x.
        b'b' | b'c' | b'f' | b'g' | b'h' | b'k' | b'p' | b't' | b'v' | b'w' | b'y' if len >= 2 => {
            w[en] += 0.6;
        }
        // A final -o/-a is the Romance noun and verb shape; English rarely ends that way.
        b'o' | b'a' if len >= 4 => {
            w[es] += 0.3;
            w[pt] += 0.3;
        }
        _ => {}
    }
    w
}

/// Composes the accented letters Spanish and Portuguese use from a letter and a combining mark.
fn compose(base: char, mark: char) -> char {
    match (base, mark) {
        ('a', '\u{301}') => 'á',
        ('e', '\u{301}') => 'é',
        ('i', '\u{301}') => 'í',
        ('o', '\u{301}') => 'ó',
        ('u', '\u{301}') => 'ú',
        ('a', '\u{300}') => 'à',
        ('a', '\u{302}') => 'â',
        ('e', '\u{302}') => 'ê',
        ('o', '\u{302}') => 'ô',
        ('a', '\u{303}') => 'ã',
        ('o', '\u{303}') => 'õ',
        ('n', '\u{303}') => 'ñ',
        ('u', '\u{308}') => 'ü',
        ('c', '\u{327}') => 'ç',
        _ => base,
    }
}

/// Strips the accents Spanish and Portuguese use; `None` for anything outside Latin letters.
fn fold(c: char) -> Option<u8> {
    let b = match c {
        'a'..='z' => return Some(c as u8),
        'á' | 'à' | 'â' | 'ã' | 'ä' => b'a',
        'é' | 'è' | 'ê' | 'ë' => b'e',
        'í' | 'ì' | 'î' | 'ï' => b'i',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' => b'o',
        'ú' | 'ù' | 'û' | 'ü' => b'u',
        'ç' => b'c',
        'ñ' => b'n',
        _ => return None,
    };
    Some(b)
}

/// Links and e-mail addresses say nothing about the sender's language (and contain "com").
fn is_link(chunk: &str) -> bool {
    // Not "es", "us" or "co": "gracias.es todo" is a missing space, not a link.
    const TLDS: [&str; 9] = ["com", "net", "org", "gov", "br", "mx", "io", "ly", "app"];
    let lower_starts = |p: &str| {
        chunk
            .get(..p.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(p))
    };
    if chunk.contains("://") || lower_starts("www.") || lower_starts("http") || chunk.contains('@')
    {
        return true;
    }
    // "pay.example.com/x": a dot between letters followed by a known top-level domain.
    let host = chunk.split('/').next().unwrap_or("");
    let host = host.trim_end_matches(|c: char| !c.is_alphanumeric());
    match host.rsplit_once('.') {
        Some((name, tld)) => {
            name.chars()
                .last()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && TLDS.iter().any(|t| t.eq_ignore_ascii_case(tld))
        }
        None => false,
    }
}

/// Word weights, parsed once. Each line is `weights | words`; the weights are added to each
/// language's score when the word appears. Scale: 3 = only this language uses it and it is
/// common, 2 = strong, 1 = leaning, < 1 = hint. Words used by several languages list a weight
/// for each, so they only count through context. A word appears on one line only (unit-tested).
/// Spellings without accents are listed when they mean something different ("tá" vs "ta").
const LEXICON: &str = "
# ---------------------------------------------------------------- English
en=3 | i the you that thanks thank thx thnx tks thanx tysm tyvm thankyou yes yeah yep yup nope nah
en=3 | please pls plz hello yessir gotcha appreciate appreciated understood understand bye goodbye
en=3 | tomorrow tmrw tmr tmrrw today tonight yesterday already sorry dont didnt cant wont isnt
en=3 | doesnt wasnt havent aint youre theyre thats whats theres wouldnt couldnt shouldnt would
en=3 | could should gonna wanna gotta ive idk lmk omw asap nvm brb ttyl tbh omg hbu wyd
en=3 | morning afternoon evening weekend friday monday tuesday wednesday thursday saturday
en=3 | sunday week month paid money pay paying payment hi is this with what when where who why
en=3 | how because everything nothing something anything welcome yw thru tho cuz yall
en=3 | yas def rgr tyty hell
en=2.5 | it its my your our their they them we are am was were been be have has had will can
en=2.5 | get got going go sure done not yet now then there here good great perfect awesome
en=2.5 | alright fine working work leaking broken need needs want wants know just still again
en=2.5 | soon next last days day night call im ill ur mine maam sir yea hey does did doing
en=2.5 | which these those an off down other another new old first bad better ago anymore
en=2.5 | problem mind ready finished maybe probably definitely exactly true might may sounds
en=2.5 | works worked looks seems feel think guess mean believe remember forgot forget hope
en=2.5 | hopefully waiting wait happened happen trying try able afford borrow thing things
en=2.5 | people guys ppl lemme gimme kinda sorta outta cya wow oops ugh bc
en=2 | for of on in at and or but if so up out back all any some one two three also too very
en=2 | really much many more less only about from by after before until till since
en=2 | early home house apartment apt unit room bathroom kitchen bedroom living floor ceiling
en=2 | wall window door lock key keys fob gate code sink toilet shower tub bath water hot cold
en=2 | heat heater ac air fridge stove oven dishwasher washer dryer laundry mold roaches bugs
en=2 | mice leak leaks fix fixed repair maintenance guy someone somebody anyone nobody neighbor
en=2 | neighbors loud music noise parking parked spot smoke detector elevator trash garbage
en=2 | disposal outlet light lights power office leasing lease receipt balance owe owed charge
en=2 | charged twice extension portal autopay card bank account deposit deposited
en=2 | notice message text texting number wrong list remove stop help later received
en=2 | confirmed noted correct cool lol np rn btw ty u r absolutely right left
en=2 | sent send sending drop dropped clear clears thought never ever every always
en=2 | job lost paycheck vacation sick daughter husband wife
en=2 | kids baby come coming came see let lets told tell ask asked say said make take give
en=2 | keep keeps running stopped beeping jammed playing quarters screen look
en=2 | package packages pet pets dog dogs cat cats car pool mailbox fan radiator inspection
en=2 | ledger move moving moved renew renewal delay deliver delivered pick picked under over
en=2 | inside outside upstairs downstairs broke break weird strange smell smells dirty clean
en=2 | pest ants rats bed showed hallway stairs carpet paint blinds thermostat furnace breaker
en=2 | bulb battery landlord manager property staff dollars bucks half full amount due behind
en=2 | minutes hour hours apply signed fill read called calling texted emailed email
en=2 | mail mailed tried use using put bring brought leave open closed close locked stuck
en=2 | missing found evict eviction short copy roger bet hun dear
en=1.5 | rent late fee fees she his her him once order lot
en=1 | date
en=0.5 | check cash link
# ---------------------------------------------------------------- Spanish
es=3 | gracias grax grx grs muchas mucha usted ustedes ud uds hola mañana manana ahorita pues
es=3 | tengo tienes tiene tienen tenemos puedo puede pueden estoy quiero quiere necesito
es=3 | necesita debo debe voy hoy ayer muy mucho bien buenos buenas bueno buena buen noches
es=3 | noche días señor señora senor senora disculpe disculpa disculpas perdón perdon todavía
es=3 | aún también tambien tmb tmbn xq xfa porfa ntp orale órale dale listo cuánto cuanto cuánta
es=3 | cuando cuándo dónde donde quién quien quiénes habla hablar llamar llamo llame llámeme
es=3 | llameme llamen marco dinero renta alquiler recibí pagué pagado deposité mandé hice hizo
es=3 | quedó cobraron cobren trabajo trabajar trabajando baño cocina puerta ventana llave llaves
es=3 | fregadero plomero gotera goteando estufa lavadora calentador cucarachas
es=3 | vecinos vecino ruido recargo efectivo transferencia comprobante hijo hija esposo
es=3 | nadie alguien eso esto ese esa aquí ahí ahi hay lunes martes miércoles miercoles
es=3 | jueves viernes sin hace hacen hacer huele descompuso rompió rompio funcionando sirve
es=3 | prende enfría enfria vienen viene venir vino arreglar arreglen podido enfermo acuerdo
es=3 | entiendo mero deme dejo dejar dejé sí español espanol día ahora más cómo fue había
es=3 | hemos hecho dije dice sé poco ninguno ninguna cualquier entonces así siempre nosotros
es=3 | okis sip simon nel ándale andale okas enseguida después despues luego nomás nomas neta chido
es=3 | oye oiga mire fíjese agradezco agradecido agradecida muchísimas muchisimas bendiciones
es=3 | bendiga adiós adios supuesto acá aca allá alla quizás quizas ojalá ojala cierto exacto
es=3 | correcto chale ando estaba estaban llegó llego llegue llegar llega pasó cambiar
es=3 | devuelven devolver aceptan acepta aceptar pagarle depositar tarjeta coche perro paquete
es=3 | buzón buzon correo reja portón porton alberca techo abanico luces fecha tiempo debajo
es=3 | abajo arriba otra otro otras otros nuevo nueva inspección inspeccion mudanza ayuda
es=3 | ayudar necesitamos cuenta cuál cual mismo mitad quincena veces saludos siento permiso
es=3 | mija mijo jefe jefa oficina cuarto pared tapado tapada basura caliente descompuesto
es=3 | descompuesta temprano deuda salir salgo chamba sueldo casi mejor peor pequeño mensaje
es=3 | verdad haciendo decir dijo conmigo cosa cosas estacionamiento
es=2.5 | el los las le les una del al yo su sus con en es soy eres pero ella ellos
es=2.5 | qué porqué perfecto gusto recibido aun han asi
es=2 | la lo un mi mis y vale orita rato aire refri tenga va vas porfavor
es=1.5 | pa sta estás
es=1 | okey
# ---------------------------------------------------------------- Portuguese
pt=3 | obrigado obrigada obrigadão obg obgd obgda brigado brigada valeu vlw beleza blz tchau
pt=3 | você voce vc vcs sim não nao tá tô estou tenho posso pode podem vou vai quero preciso
pt=3 | devo hoje hj amanhã amanha ontem agora depois ainda também tambem tbm muito muita
pt=3 | mto bem bom boa noite manhã dinheiro aluguel pagamento paguei recebi recebeu
pt=3 | fiz fez mandei liguei falei esqueci consegui consegue conseguir quem quando
pt=3 | quanto quanta onde qual eu meu minha meus minhas ele ela nós isso isto esse essa
pt=3 | lá já só com sem pra pela num numa uma em na nas é oi olá
pt=3 | tudo td chuveiro pia torneira geladeira fogão fechadura teto chão vazando vazamento
pt=3 | barulho vizinhos vizinho banheiro cozinha janela chave chaves encanador comprovante pix
pt=3 | boleto emprego trabalho trabalhar filho filha senhor senhora desculpa desculpe
pt=3 | ninguém ninguem alguém alguem falar falando fala falo ligar ligo ligue esquenta quebrou
pt=3 | saindo veio vem vieram receber deixo deixar deixa tenha terça terca sexta feira
pt=3 | obrigadinho perfeito certo entendi doente mês salário portugues português garagem
pt=3 | máquina consertar arrumar aquecedor mais seu sua seus suas dele dela lhe comigo
pt=3 | mesmo demorou opa quase sei agradeço agradeco abençoe abencoe moça moca moço moco pfv
pt=3 | pfvr tmj firmeza bora então entao né cadê cade msm mta qnd qdo cmg ctz flw bjs acho
pt=3 | achei chegou chegar estão estao são sao foi teve tive pegar peguei trabalhando
pt=3 | aguardando aguarde aguardo cartão cartao encomenda pacote correio caixa portão portao
pt=3 | estacionamento luzes tempo fim embaixo cima outra outro outros outras vezes novo nova
pt=3 | vistoria mudança mudanca ajuda ajudar precisamos sempre nosso nossa quinzena licença
pt=3 | escritório escritorio parede cano entupido entupida goteira umidade mofo lixo quente
pt=3 | cedo dívida divida extrato sair saio grana trampo coisa coisas pois daqui melhor pior
pt=3 | pequeno mensagem certinho certeza verdade fazendo faz fazer dizer disse falou quer
pt=3 | nenhum nenhuma qualquer assim pouco diz metade brigadao obrigadao oq
pt=2.5 | os ao aos tem estava um combinado pelo fechado joia jóia até logo quarto chega debaixo
pt=2 | ai aí ar barata porta segunda quarta quinta esperar espera das mt abs acha ali baratas
pt=2 | gente
pt=1.5 | pro manda
# ---------------------------------------------------------------- shared
en=1 es=1 pt=0.4 | no
en=1 es=1 pt=1 | me
en=1.5 pt=0.8 | to
en=1.2 pt=1.5 | do
en=1.2 pt=1.2 | as
en=1.5 es=1 | he
en=1 es=1.5 | son sale
en=0.5 es=2 | van
en=0.8 es=2.5 | ya
en=1 pt=1 | show
en=0.5 es=1 | ha
en=1 pt=1.5 | ate
es=2.5 pt=0.2 | si
es=2 pt=0.8 | mes este solo
es=2 pt=0.5 | todavia
es=1.5 pt=0.8 | entendido igualmente pague onda
es=1.5 pt=1 | piso
es=1.2 pt=0.8 | tu
es=1 pt=2 | consigo dos
es=0.8 pt=1.2 | mas aqui
es=0.6 pt=1.5 | ta
es=0.5 pt=2 | da
es=0.5 pt=2.5 | cachorro
es=0.5 pt=1.5 | o pronto
es=0.3 pt=1.5 | e ja
es=1 pt=1.2 | dia pq
es=1 pt=1 | de que q para por se te nada claro casa luz agua fuga sábado sabado domingo cobrar
es=1 pt=1 | cheque foto hora ver pagar pago recibo contrato esposa marido familia semana tb
es=1 pt=1 | apartamento apto depósito deposito tarde resto falta quebrado quebrada
es=1 pt=1 | funciona abre calor frio frío nos porque ola sabe ser vamos estamos esta está
es=1 pt=1 | mande favor pude como estar fui era digo vez nunca carro gato piscina ventilador
es=1 pt=1 | mudar estado renovar completo dólares dolares algo bastante tal cada ratas
es=1 pt=1 | ratos bichos sala grande menos próxima proxima queria podia contigo ti cara tipo
es=1 pt=1 | esperando pagando dios tranquilo tranquila seguro fds secadora
en=0.6 es=0.6 pt=0.6 | a
# Known and deliberately neutral, so their spelling is not read as evidence.
en=0 | ok okay oki okii okie k hmm hm mm oh ah eh uh xd
# Names and loanwords every tenant uses, whatever the language: pagué por zelle.
en=0 | zelle venmo cashapp paypal whatsapp internet wifi app online
en=1 es=1 pt=1 | gas hospital total
";

/// Parses [`LEXICON`] once. Malformed entries are skipped rather than panicking.
fn lexicon() -> &'static HashMap<&'static str, [f32; 3]> {
    static LEXICON_MAP: OnceLock<HashMap<&'static str, [f32; 3]>> = OnceLock::new();
    LEXICON_MAP.get_or_init(|| {
        let mut map = HashMap::with_capacity(1500);
        for (weights, words) in lexicon_lines() {
            for word in words.split_whitespace() {
                let entry = map.entry(word).or_insert([0.0; 3]);
                add(entry, weights);
            }
        }
        map
    })
}

/// The `(weights, words)` lines of [`LEXICON`].
fn lexicon_lines() -> impl Iterator<Item = ([f32; 3], &'static str)> {
    LEXICON.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (head, words) = line.split_once('|')?;
        let mut weights = [0.0f32; 3];
        for part in head.split_whitespace() {
            let (code, value) = part.split_once('=')?;
            let lang = Language::from_code(code)?;
            let i = Language::ALL.iter().position(|l| *l == lang)?;
            weights[i] = value.parse().ok()?;
        }
        Some((weights, words))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Language::{English as En, Portuguese as Pt, Spanish as Es};

    fn lang(text: &str) -> Option<Language> {
        detect(text).map(|d| d.language)
    }

    fn conf(text: &str) -> f32 {
        detect(text).map_or(0.0, |d| d.confidence)
    }

    fn det(language: Language, confidence: f32) -> Detection {
        Detection {
            language,
            confidence,
        }
    }

    #[test]
    fn codes_round_trip() {
        for l in Language::ALL {
            assert_eq!(Language::from_code(l.code()), Some(l));
        }
        assert_eq!(Language::from_code("EN"), Some(En));
        assert_eq!(Language::from_code("Es"), Some(Es));
        assert_eq!(Language::from_code("pT"), Some(Pt));
        for bad in ["", "e", "eng", "pt-BR", " en", "fr"] {
            assert_eq!(Language::from_code(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_english_replies() {
        for text in [
            "Yes",
            "yes!",
            "YES",
            "yesss",
            "Yep",
            "Nope",
            "Thanks",
            "thx",
            "Thank you",
            "ty",
            "I paid",
            "Sure",
            "Got it",
            "Will do",
            "pls",
            "u",
            "ur",
            "Hello",
            "Hi",
            "Sorry",
            "Good morning",
            "Tomorrow",
            "Paid",
            "i do",
            "Nah",
        ] {
            assert_eq!(lang(text), Some(En), "{text:?}");
        }
    }

    #[test]
    fn short_spanish_replies() {
        for text in [
            "Sí",
            "Si",
            "si",
            "siii",
            "SII",
            "Gracias",
            "gracias!!",
            "Claro que sí",
            "Vale",
            "Dale",
            "Listo",
            "Bueno",
            "Perfecto",
            "Está bien",
            "Esta bien",
            "Hola",
            "Buenos días",
            "buenos dias",
            "Buenas",
            "Ya pagué",
            "ya pague",
            "Mañana",
            "manana",
            "Ahorita",
            "xq",
            "tmb",
            "Ok gracias",
            "Ya",
            "¿Qué?",
            "jajaja",
            "Porfa",
            "Grax",
            "Sale pues",
        ] {
            assert_eq!(lang(text), Some(Es), "{text:?}");
        }
    }

    #[test]
    fn short_portuguese_replies() {
        for text in [
            "Sim",
            "sim",
            "simmm",
            "Não",
            "Nao",
            "NÃO",
            "Obrigado",
            "Obrigada",
            "obg",
            "Beleza",
            "blz",
            "Tá bom",
            "Ta bom",
            "Tá",
            "Valeu",
            "vlw",
            "Perfeito",
            "Tudo bem",
            "Olá",
            "Oi",
            "oii",
            "Bom dia",
            "Boa tarde",
            "Já paguei",
            "Ja paguei",
            "Já",
            "Claro que sim",
            "vc",
            "kkkk",
            "rsrs",
            "Pronto",
            "Amanhã",
            "hj",
            "Tô",
            "é",
        ] {
            assert_eq!(lang(text), Some(Pt), "{text:?}");
        }
    }

    #[test]
    fn single_strong_words_are_confident() {
        for text in [
            "Gracias", "Obrigado", "Thanks", "Sim", "Não", "Yes", "Valeu", "Hola", "Oi",
        ] {
            assert!(conf(text) >= 0.85, "{text:?}: {}", conf(text));
        }
        for text in [
            "Tengo que pagar la renta el viernes",
            "Eu vou pagar o aluguel amanhã",
            "I will pay the rent tomorrow",
        ] {
            assert!(conf(text) >= 0.98, "{text:?}: {}", conf(text));
        }
    }

    #[test]
    fn texts_without_language_evidence_are_none() {
        for text in [
            "",
            " ",
            "\n\t",
            "ok",
            "Ok",
            "OK!",
            "okay",
            "Okkk",
            "k",
            "👍",
            "🙏🏽🙏🏽",
            "123",
            "$1,250.00",
            "4B",
            "10/15",
            "?",
            "...",
            "https://pay.example.com/r/8f2k",
            "www.rentportal.com",
            "pay.example.com",
            "tenant@example.com",
            "a",
            "ok 👍",
            "hmm",
        ] {
            assert_eq!(detect(text), None, "{text:?}");
        }
    }

    #[test]
    fn ambiguous_words_alone_are_weak() {
        // "No" is English and Spanish: English by default, but never confidently.
        assert_eq!(lang("No"), Some(En));
        assert!(conf("No") <= 0.5);
        assert!(conf("No.") <= 0.5);
        // "Claro", "De nada", "Para", "que", "de", "Por favor" are Spanish and Portuguese.
        for text in ["Claro", "De nada", "Para", "que", "de", "Por favor", "q"] {
            assert_eq!(lang(text), Some(Es), "{text:?}");
            assert!(conf(text) <= 0.5, "{text:?}: {}", conf(text));
        }
    }

    #[test]
    fn context_resolves_ambiguous_words() {
        assert_eq!(lang("No tengo dinero"), Some(Es));
        assert_eq!(lang("No I can't"), Some(En));
        assert_eq!(lang("no puedo"), Some(Es));
        assert_eq!(lang("no not yet"), Some(En));
        assert_eq!(lang("Claro que sim"), Some(Pt));
        assert_eq!(lang("Claro que si"), Some(Es));
        assert_eq!(lang("De nada, obrigado"), Some(Pt));
        assert_eq!(lang("De nada, gracias a usted"), Some(Es));
        assert_eq!(lang("Para mañana"), Some(Es));
        assert_eq!(lang("Para amanhã"), Some(Pt));
        assert_eq!(lang("que dia vc vem?"), Some(Pt));
        assert_eq!(lang("q dia viene?"), Some(Es));
        assert_eq!(lang("pq me cobraram?"), Some(Pt));
        assert_eq!(lang("xq me cobraron?"), Some(Es));
        assert_eq!(lang("ok thanks"), Some(En));
        assert_eq!(lang("ok obrigado"), Some(Pt));
        assert!(conf("No tengo dinero") >= 0.95);
    }

    #[test]
    fn accents_case_and_spelling_variants() {
        assert_eq!(lang("NAO"), Some(Pt));
        assert_eq!(lang("na\u{303}o"), Some(Pt), "decomposed accent");
        assert_eq!(lang("Voce\u{302} pode?"), Some(Pt));
        assert_eq!(lang("OBRIGADAAAA"), Some(Pt));
        assert_eq!(lang("graciasss"), Some(Es));
        assert_eq!(lang("Thank youuu"), Some(En));
        assert_eq!(lang("can't"), Some(En));
        assert_eq!(lang("I’m late"), Some(En));
        assert_eq!(lang("¡Gracias!"), Some(Es));
        assert_eq!(lang("Sí 👍"), Some(Es));
        assert_eq!(lang("👍 sim"), Some(Pt));
        assert_eq!(lang("thx 4 the reminder"), Some(En));
        // Unknown words still count through their spelling.
        assert_eq!(lang("informação"), Some(Pt));
        assert_eq!(lang("señal"), Some(Es));
        assert_eq!(lang("shipping"), Some(En));
    }

    #[test]
    fn links_do_not_count() {
        assert_eq!(lang("pague aqui https://pay.example.com/tenant"), Some(Es));
        assert_eq!(lang("vc pode ver em www.example.com"), Some(Pt));
        assert_eq!(detect("http://the-you-thanks.com"), None);
    }

    #[test]
    fn never_panics_and_confidence_is_bounded() {
        let long_en = "I will pay the rent tomorrow ".repeat(10_000);
        let long_word = "a".repeat(100_000);
        let long_dashes = "sim-".repeat(100_000);
        let inputs = [
            "\0",
            "\u{feff}",
            "\u{200d}\u{200d}",
            "İstanbul İİİ",
            "ß ẞ ǅ ﬀ",
            "\u{301}\u{303}",
            "a\u{301}\u{301}\u{301}",
            "مرحبا",
            "你好吗",
            "Привет как дела",
            "👨‍👩‍👧‍👦🏳️‍🌈",
            "''''''",
            "¿¿¿¡¡¡",
            "can''t",
            "\u{10ffff}",
            &long_en,
            &long_word,
            &long_dashes,
        ];
        for text in inputs {
            if let Some(d) = detect(text) {
                assert!(d.confidence.is_finite(), "{text:?}");
                assert!((0.0..=1.0).contains(&d.confidence), "{text:?}");
            }
        }
        assert_eq!(lang(&long_en), Some(En));
        assert_eq!(lang(&long_dashes), Some(Pt));
        assert_eq!(detect(&long_word), None);
        assert!(conf(&long_en) <= MAX_CONFIDENCE);
    }

    #[test]
    fn merge_takes_anything_over_nothing() {
        let weak = det(En, 0.39);
        assert_eq!(merge(None, weak), weak);
    }

    #[test]
    fn merge_weak_guess_never_overwrites_strong_detection() {
        let strong_es = det(Es, 0.99);
        // "No" alone.
        let no = detect("No").unwrap();
        assert_eq!(merge(Some(strong_es), no), strong_es);
        // "Claro" alone: Spanish at low confidence does not replace confident Portuguese.
        let claro = detect("Claro").unwrap();
        assert_eq!(merge(Some(det(Pt, 0.91)), claro), det(Pt, 0.91));
    }

    #[test]
    fn merge_strong_new_language_overrides_equal_or_lower() {
        let old = det(Es, 0.91);
        assert_eq!(merge(Some(old), det(En, 0.99)), det(En, 0.99));
        assert_eq!(
            merge(Some(old), det(Pt, 0.91)),
            det(Pt, 0.91),
            "equal confidence"
        );
        // A full sentence reaches the cap, so it can always replace a capped older one.
        let sentence = detect("Eu vou pagar o aluguel na sexta").unwrap();
        assert_eq!(merge(Some(det(Es, MAX_CONFIDENCE)), sentence), sentence);
        // ...but a lower-confidence one cannot.
        assert_eq!(merge(Some(old), det(En, 0.9)), old);
    }

    #[test]
    fn merge_same_language_keeps_the_strongest() {
        let strong = det(Pt, 0.99);
        let weak = det(Pt, 0.6);
        assert_eq!(
            merge(Some(strong), weak),
            strong,
            "not weakened by a short reply"
        );
        assert_eq!(
            merge(Some(weak), strong),
            strong,
            "strengthened by a long message"
        );
        assert_eq!(merge(Some(strong), strong), strong);
    }

    #[test]
    fn merge_returns_current_unchanged_when_keeping_it() {
        // Callers compare the result with the stored value to skip a write.
        let current = det(Es, 0.7);
        let kept = merge(Some(current), det(Es, 0.5));
        assert_eq!(kept.confidence.to_bits(), current.confidence.to_bits());
        assert_eq!(kept, current);
    }

    #[test]
    fn merge_ignores_corrupt_stored_confidence() {
        let new = det(En, 0.4);
        for bad in [f32::NAN, f32::INFINITY, -0.1, 1.5] {
            assert_eq!(merge(Some(det(Es, bad)), new), new, "{bad}");
        }
    }

    #[test]
    fn merge_over_a_conversation() {
        let mut stored: Option<Detection> = None;
        let mut apply = |text: &str| {
            if let Some(d) = detect(text) {
                stored = Some(merge(stored, d));
            }
            stored.map(|d| d.language)
        };
        assert_eq!(apply("ok"), None, "no evidence, nothing stored");
        assert_eq!(apply("No"), Some(En), "a weak guess beats nothing");
        assert_eq!(apply("Gracias"), Some(Es), "stronger evidence replaces it");
        assert_eq!(apply("ok"), Some(Es));
        assert_eq!(apply("No"), Some(Es), "a weak 'No' keeps Spanish");
        assert_eq!(apply("Claro"), Some(Es));
        assert_eq!(
            apply("Le pago la renta el viernes sin falta"),
            Some(Es),
            "same language, stronger"
        );
        assert_eq!(
            apply("Thanks"),
            Some(Es),
            "one English word does not beat a sentence"
        );
        assert_eq!(
            apply("Sorry, I will pay the rest of the rent on friday"),
            Some(En),
            "a full sentence does"
        );
    }

    #[test]
    fn lexicon_words_are_listed_once_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        let mut lines = 0;
        for (_, words) in lexicon_lines() {
            lines += 1;
            for word in words.split_whitespace() {
                assert!(seen.insert(word), "{word:?} is listed twice");
                assert!(
                    word.chars().all(char::is_alphabetic),
                    "{word:?} can never match"
                );
                assert_eq!(word, word.to_lowercase(), "{word:?} must be lowercase");
            }
        }
        let listed = LEXICON.lines().filter(|l| l.contains('|')).count();
        assert_eq!(lines, listed, "a lexicon line failed to parse");
    }
}
