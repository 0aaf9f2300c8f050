//! English / Spanish / Portuguese detection for tenant SMS.
//!
//! Tenants mostly answer in one or two words ("Sí", "Sim", "Yes", "Gracias", "Tá bom"), so this is a
//! weighted lexicon of words typical of each language (strong markers weigh more; words the
//! languages share count for each), plus letters only one language uses (ñ ¿ ¡ for Spanish, ã õ ç ê
//! ô for Portuguese). Confidence grows with the lead of the best language over the next one: a lone
//! "Gracias" is strong, a lone "No" (English and Spanish) or "Claro" (Spanish and Portuguese) weak.
//! Text with no evidence ("ok", emoji, numbers, links) gives no detection.

use std::{collections::HashMap, sync::OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    English,
    Spanish,
    Portuguese,
}

impl Language {
    pub fn code(self) -> &'static str {
        match self {
            Self::English => "en",
            Self::Spanish => "es",
            Self::Portuguese => "pt",
        }
    }

    pub fn from_code(s: &str) -> Option<Language> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Self::English),
            "es" => Some(Self::Spanish),
            "pt" => Some(Self::Portuguese),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub language: Language,
    /// 0.0..=1.0.
    pub confidence: f32,
}

/// Weights (en, es, pt) of words, keyed by their lowercase form; accented forms that tell the
/// languages apart are listed as written, and every key is also reachable without accents.
const LEXICON: &[(&str, f32, f32, f32)] = &[
    // English.
    ("yes", 3.0, 0.0, 0.0),
    ("yeah", 3.0, 0.0, 0.0),
    ("yep", 3.0, 0.0, 0.0),
    ("yup", 3.0, 0.0, 0.0),
    ("nope", 3.0, 0.0, 0.0),
    ("thanks", 3.0, 0.0, 0.0),
    ("thank", 3.0, 0.0, 0.0),
    ("thx", 3.0, 0.0, 0.0),
    ("ty", 2.5, 0.0, 0.0),
    ("please", 3.0, 0.0, 0.0),
    ("pls", 3.0, 0.0, 0.0),
    ("plz", 3.0, 0.0, 0.0),
    ("the", 3.0, 0.0, 0.0),
    ("you", 3.0, 0.0, 0.0),
    ("your", 3.0, 0.0, 0.0),
    ("u", 1.5, 0.0, 0.0),
    ("ur", 2.0, 0.0, 0.0),
    ("i", 2.0, 0.0, 0.0),
    ("i'm", 3.0, 0.0, 0.0),
    ("im", 2.5, 0.0, 0.0),
    ("i'll", 3.0, 0.0, 0.0),
    ("will", 3.0, 0.0, 0.0),
    ("would", 3.0, 0.0, 0.0),
    ("can", 2.5, 0.0, 0.0),
    ("can't", 3.0, 0.0, 0.0),
    ("cant", 3.0, 0.0, 0.0),
    ("don't", 3.0, 0.0, 0.0),
    ("dont", 3.0, 0.0, 0.0),
    ("won't", 3.0, 0.0, 0.0),
    ("didn't", 3.0, 0.0, 0.0),
    ("wasn't", 3.0, 0.0, 0.0),
    ("it's", 3.0, 0.0, 0.0),
    ("that's", 3.0, 0.0, 0.0),
    ("there's", 3.0, 0.0, 0.0),
    ("what's", 3.0, 0.0, 0.0),
    ("whats", 3.0, 0.0, 0.0),
    ("what", 3.0, 0.0, 0.0),
    ("when", 3.0, 0.0, 0.0),
    ("where", 3.0, 0.0, 0.0),
    ("why", 3.0, 0.0, 0.0),
    ("how", 3.0, 0.0, 0.0),
    ("who", 3.0, 0.0, 0.0),
    ("this", 3.0, 0.0, 0.0),
    ("that", 3.0, 0.0, 0.0),
    ("with", 3.0, 0.0, 0.0),
    ("have", 3.0, 0.0, 0.0),
    ("has", 2.5, 0.0, 0.0),
    ("had", 2.5, 0.0, 0.0),
    ("was", 2.5, 0.0, 0.0),
    ("is", 2.5, 0.0, 0.0),
    ("are", 2.5, 0.0, 0.0),
    ("am", 1.5, 0.0, 0.0),
    ("it", 2.5, 0.0, 0.0),
    ("my", 2.5, 0.0, 0.0),
    ("we", 2.5, 0.0, 0.0),
    ("they", 3.0, 0.0, 0.0),
    ("and", 3.0, 0.0, 0.0),
    ("but", 3.0, 0.0, 0.0),
    ("or", 2.0, 0.0, 0.0),
    ("if", 2.5, 0.0, 0.0),
    ("not", 3.0, 0.0, 0.0),
    ("yet", 3.0, 0.0, 0.0),
    ("just", 3.0, 0.0, 0.0),
    ("still", 3.0, 0.0, 0.0),
    ("of", 2.5, 0.0, 0.0),
    ("to", 2.0, 0.0, 0.5),
    ("for", 2.5, 0.0, 0.0),
    ("on", 2.5, 0.0, 0.0),
    ("in", 2.0, 0.0, 0.0),
    ("at", 2.5, 0.0, 0.0),
    ("from", 3.0, 0.0, 0.0),
    ("be", 2.5, 0.0, 0.0),
    ("so", 2.0, 0.0, 0.0),
    ("much", 3.0, 0.0, 0.0),
    ("now", 2.5, 0.0, 0.0),
    ("later", 3.0, 0.0, 0.0),
    ("today", 3.0, 0.0, 0.0),
    ("tomorrow", 3.0, 0.0, 0.0),
    ("tmrw", 3.0, 0.0, 0.0),
    ("tonight", 3.0, 0.0, 0.0),
    ("yesterday", 3.0, 0.0, 0.0),
    ("week", 3.0, 0.0, 0.0),
    ("month", 3.0, 0.0, 0.0),
    ("next", 3.0, 0.0, 0.0),
    ("rent", 3.0, 0.0, 0.0),
    ("pay", 3.0, 0.0, 0.0),
    ("paid", 3.0, 0.0, 0.0),
    ("payment", 3.0, 0.0, 0.0),
    ("paycheck", 3.0, 0.0, 0.0),
    ("money", 3.0, 0.0, 0.0),
    ("owe", 3.0, 0.0, 0.0),
    ("balance", 3.0, 0.0, 0.0),
    ("fee", 3.0, 0.0, 0.0),
    ("late", 3.0, 0.0, 0.0),
    ("check", 2.5, 0.0, 0.0),
    ("receipt", 3.0, 0.0, 0.0),
    ("sorry", 3.0, 0.0, 0.0),
    ("sure", 3.0, 0.0, 0.0),
    ("thing", 3.0, 0.0, 0.0),
    ("hello", 3.0, 0.0, 0.0),
    ("hi", 3.0, 0.0, 0.0),
    ("hey", 3.0, 0.0, 0.0),
    ("good", 3.0, 0.0, 0.0),
    ("morning", 3.0, 0.0, 0.0),
    ("afternoon", 3.0, 0.0, 0.0),
    ("evening", 3.0, 0.0, 0.0),
    ("night", 3.0, 0.0, 0.0),
    ("call", 3.0, 0.0, 0.0),
    ("me", 1.0, 1.0, 1.0),
    ("back", 3.0, 0.0, 0.0),
    ("got", 3.0, 0.0, 0.0),
    ("get", 3.0, 0.0, 0.0),
    ("do", 2.0, 0.0, 0.8),
    ("did", 3.0, 0.0, 0.0),
    ("does", 3.0, 0.0, 0.0),
    ("need", 3.0, 0.0, 0.0),
    ("help", 3.0, 0.0, 0.0),
    ("fix", 3.0, 0.0, 0.0),
    ("fixed", 3.0, 0.0, 0.0),
    ("broke", 3.0, 0.0, 0.0),
    ("broken", 3.0, 0.0, 0.0),
    ("leaking", 3.0, 0.0, 0.0),
    ("leak", 3.0, 0.0, 0.0),
    ("water", 3.0, 0.0, 0.0),
    ("hot", 3.0, 0.0, 0.0),
    ("heater", 3.0, 0.0, 0.0),
    ("working", 3.0, 0.0, 0.0),
    ("work", 3.0, 0.0, 0.0),
    ("works", 3.0, 0.0, 0.0),
    ("sink", 3.0, 0.0, 0.0),
    ("kitchen", 3.0, 0.0, 0.0),
    ("bathroom", 3.0, 0.0, 0.0),
    ("door", 3.0, 0.0, 0.0),
    ("lock", 3.0, 0.0, 0.0),
    ("toilet", 3.0, 0.0, 0.0),
    ("mold", 3.0, 0.0, 0.0),
    ("office", 3.0, 0.0, 0.0),
    ("open", 3.0, 0.0, 0.0),
    ("someone", 3.0, 0.0, 0.0),
    ("come", 1.5, 1.0, 0.0),
    ("coming", 3.0, 0.0, 0.0),
    ("sent", 3.0, 0.0, 0.0),
    ("send", 3.0, 0.0, 0.0),
    ("sending", 3.0, 0.0, 0.0),
    ("know", 3.0, 0.0, 0.0),
    ("let", 3.0, 0.0, 0.0),
    ("letting", 3.0, 0.0, 0.0),
    ("sounds", 3.0, 0.0, 0.0),
    ("great", 3.0, 0.0, 0.0),
    ("fine", 3.0, 0.0, 0.0),
    ("perfect", 3.0, 0.0, 0.0),
    ("appreciate", 3.0, 0.0, 0.0),
    ("wrong", 3.0, 0.0, 0.0),
    ("number", 3.0, 0.0, 0.0),
    ("new", 3.0, 0.0, 0.0),
    ("moved", 3.0, 0.0, 0.0),
    ("out", 2.5, 0.0, 0.0),
    ("already", 3.0, 0.0, 0.0),
    ("lost", 3.0, 0.0, 0.0),
    ("job", 3.0, 0.0, 0.0),
    ("time", 3.0, 0.0, 0.0),
    ("more", 3.0, 0.0, 0.0),
    ("half", 3.0, 0.0, 0.0),
    ("rest", 3.0, 0.0, 0.0),
    ("there", 3.0, 0.0, 0.0),
    ("here", 3.0, 0.0, 0.0),
    ("home", 3.0, 0.0, 0.0),
    ("after", 3.0, 0.0, 0.0),
    ("anytime", 3.0, 0.0, 0.0),
    ("enter", 3.0, 0.0, 0.0),
    ("without", 3.0, 0.0, 0.0),
    ("maintenance", 2.5, 0.0, 0.0),
    ("neighbors", 3.0, 0.0, 0.0),
    ("loud", 3.0, 0.0, 0.0),
    ("every", 3.0, 0.0, 0.0),
    ("trash", 3.0, 0.0, 0.0),
    ("picked", 3.0, 0.0, 0.0),
    ("light", 3.0, 0.0, 0.0),
    ("lease", 3.0, 0.0, 0.0),
    ("renew", 3.0, 0.0, 0.0),
    ("friday", 3.0, 0.0, 0.0),
    ("monday", 3.0, 0.0, 0.0),
    ("tuesday", 3.0, 0.0, 0.0),
    ("wednesday", 3.0, 0.0, 0.0),
    ("thursday", 3.0, 0.0, 0.0),
    ("saturday", 3.0, 0.0, 0.0),
    ("sunday", 3.0, 0.0, 0.0),
    ("ok", 0.0, 0.0, 0.0),
    ("person", 2.5, 0.0, 0.0),
    ("one", 2.5, 0.0, 0.0),
    ("mail", 2.5, 0.0, 0.0),
    ("box", 2.5, 0.0, 0.0),
    ("online", 2.0, 0.0, 0.0),
    ("set", 2.5, 0.0, 0.0),
    ("plan", 1.5, 0.5, 0.5),
    ("order", 1.0, 0.0, 0.0),
    ("dropped", 3.0, 0.0, 0.0),
    ("closet", 3.0, 0.0, 0.0),
    ("bedroom", 3.0, 0.0, 0.0),
    ("ceiling", 3.0, 0.0, 0.0),
    ("running", 3.0, 0.0, 0.0),
    ("keeps", 3.0, 0.0, 0.0),
    ("again", 3.0, 0.0, 0.0),
    ("due", 2.5, 0.0, 0.0),
    ("does", 3.0, 0.0, 0.0),
    ("then", 3.0, 0.0, 0.0),
    ("comes", 3.0, 0.0, 0.0),
    ("delay", 3.0, 0.0, 0.0),
    ("too", 3.0, 0.0, 0.0),
    ("lot", 2.5, 0.0, 0.0),
    ("parking", 3.0, 0.0, 0.0),
    ("isn't", 3.0, 0.0, 0.0),
    // Frequent function words and everyday forms of each language, beyond the domain words above.
    ("alright", 3.0, 0.0, 0.0),
    ("all", 2.5, 0.0, 0.0),
    ("right", 3.0, 0.0, 0.0),
    ("an", 2.0, 0.0, 0.0),
    ("as", 1.0, 0.0, 1.0),
    ("about", 3.0, 0.0, 0.0),
    ("our", 3.0, 0.0, 0.0),
    ("us", 2.5, 0.0, 0.0),
    ("he", 2.5, 0.0, 0.0),
    ("she", 3.0, 0.0, 0.0),
    ("him", 3.0, 0.0, 0.0),
    ("her", 3.0, 0.0, 0.0),
    ("them", 3.0, 0.0, 0.0),
    ("been", 3.0, 0.0, 0.0),
    ("were", 3.0, 0.0, 0.0),
    ("should", 3.0, 0.0, 0.0),
    ("could", 3.0, 0.0, 0.0),
    ("any", 2.5, 0.0, 0.0),
    ("some", 3.0, 0.0, 0.0),
    ("problem", 3.0, 0.0, 0.0),
    ("message", 3.0, 0.0, 0.0),
    ("understand", 3.0, 0.0, 0.0),
    ("going", 3.0, 0.0, 0.0),
    ("gonna", 3.0, 0.0, 0.0),
    ("want", 3.0, 0.0, 0.0),
    ("make", 3.0, 0.0, 0.0),
    ("take", 3.0, 0.0, 0.0),
    ("give", 3.0, 0.0, 0.0),
    ("sir", 3.0, 0.0, 0.0),
    ("ma'am", 3.0, 0.0, 0.0),
    ("okay", 0.0, 0.0, 0.0),
    ("lol", 2.0, 0.0, 0.0),
    ("sip", 0.0, 3.0, 0.0),
    ("nel", 0.0, 2.5, 0.0),
    ("sus", 0.0, 2.5, 0.0),
    ("mis", 0.0, 2.5, 0.0),
    ("usted", 0.0, 3.5, 0.0),
    ("ustedes", 0.0, 3.5, 0.0),
    ("tú", 0.0, 3.0, 0.0),
    ("tu", 0.0, 1.5, 0.3),
    ("él", 0.0, 3.0, 0.0),
    ("ella", 0.0, 3.0, 0.0),
    ("ellos", 0.0, 3.0, 0.0),
    ("estás", 0.0, 3.0, 0.0),
    ("están", 0.0, 3.0, 0.0),
    ("ser", 0.0, 1.0, 1.0),
    ("algo", 0.0, 1.5, 1.0),
    ("aquí", 0.0, 1.5, 1.0),
    ("allí", 0.0, 3.0, 0.0),
    ("nos", 0.0, 1.0, 1.0),
    ("mensaje", 0.0, 3.5, 0.0),
    ("problema", 0.0, 1.2, 1.2),
    ("seu", 0.0, 0.0, 3.5),
    ("sua", 0.0, 0.0, 3.5),
    ("seus", 0.0, 0.0, 3.5),
    ("suas", 0.0, 0.0, 3.5),
    ("ele", 0.0, 0.0, 3.5),
    ("ela", 0.0, 0.0, 3.5),
    ("eles", 0.0, 0.0, 3.5),
    ("elas", 0.0, 0.0, 3.5),
    ("nós", 0.0, 0.0, 3.5),
    ("lá", 0.0, 0.0, 3.0),
    ("aí", 0.0, 0.0, 3.0),
    ("estão", 0.0, 0.0, 3.5),
    ("foi", 0.0, 0.0, 3.5),
    ("vai", 0.0, 0.0, 3.5),
    ("fica", 0.0, 0.0, 3.0),
    ("tinha", 0.0, 0.0, 3.5),
    ("mesmo", 0.0, 0.3, 2.5),
    ("msm", 0.0, 0.0, 3.0),
    ("né", 0.0, 0.0, 3.5),
    ("gostaria", 0.0, 0.0, 3.5),
    // Spanish.
    ("sí", 0.0, 3.5, 0.0),
    ("si", 0.0, 3.0, 0.3),
    ("gracias", 0.0, 3.5, 0.0),
    ("grasias", 0.0, 3.5, 0.0),
    ("muchas", 0.0, 3.0, 0.0),
    ("mucho", 0.0, 3.0, 0.0),
    ("muy", 0.0, 3.0, 0.0),
    ("vale", 0.0, 2.0, 0.5),
    ("dale", 0.0, 3.0, 0.0),
    ("listo", 0.0, 3.0, 0.0),
    ("bueno", 0.0, 3.0, 0.0),
    ("buenos", 0.0, 3.0, 0.0),
    ("buenas", 0.0, 3.0, 0.0),
    ("bien", 0.0, 3.0, 0.0),
    ("perfecto", 0.0, 3.0, 0.0),
    ("hola", 0.0, 3.0, 0.0),
    ("días", 0.0, 1.5, 0.5),
    ("dias", 0.0, 1.0, 0.8),
    ("tardes", 0.0, 3.0, 0.0),
    ("noches", 0.0, 3.0, 0.0),
    ("ya", 0.0, 3.0, 0.0),
    ("pagué", 0.0, 3.5, 0.0),
    ("pague", 0.0, 3.0, 0.3),
    ("pago", 0.0, 1.5, 1.2),
    ("renta", 0.0, 3.0, 0.0),
    ("alquiler", 0.0, 3.0, 0.0),
    ("dinero", 0.0, 3.0, 0.0),
    ("mañana", 0.0, 3.5, 0.0),
    ("manana", 0.0, 3.0, 0.0),
    ("viernes", 0.0, 3.0, 0.0),
    ("lunes", 0.0, 3.0, 0.0),
    ("martes", 0.0, 3.0, 0.0),
    ("jueves", 0.0, 3.0, 0.0),
    ("miércoles", 0.0, 3.0, 0.0),
    ("tengo", 0.0, 3.0, 0.0),
    ("tiene", 0.0, 3.0, 0.0),
    ("puedo", 0.0, 3.0, 0.0),
    ("puede", 0.0, 3.0, 0.0),
    ("pueden", 0.0, 3.0, 0.0),
    ("estoy", 0.0, 3.0, 0.0),
    ("está", 0.0, 1.2, 1.2),
    ("esta", 0.0, 1.5, 0.8),
    ("todavía", 0.0, 3.5, 0.0),
    ("todavia", 0.0, 3.0, 0.0),
    ("hasta", 0.0, 3.0, 0.0),
    ("el", 0.0, 2.5, 0.0),
    ("la", 0.0, 2.0, 0.3),
    ("los", 0.0, 2.5, 0.0),
    ("las", 0.0, 2.5, 0.0),
    ("lo", 0.0, 2.5, 0.0),
    ("le", 0.0, 2.5, 0.0),
    ("del", 0.0, 2.5, 0.0),
    ("al", 0.0, 2.0, 0.0),
    ("un", 0.0, 2.5, 0.0),
    ("una", 0.0, 2.5, 0.0),
    ("y", 0.0, 2.5, 0.0),
    ("es", 0.0, 2.5, 0.0),
    ("son", 0.0, 1.5, 0.0),
    ("eso", 0.0, 3.0, 0.0),
    ("esto", 0.0, 2.0, 0.5),
    ("este", 0.0, 1.5, 0.8),
    ("yo", 0.0, 3.0, 0.0),
    ("mi", 0.0, 2.5, 0.0),
    ("su", 0.0, 2.5, 0.0),
    ("pero", 0.0, 3.0, 0.0),
    ("cuando", 0.0, 3.0, 0.0),
    ("cuándo", 0.0, 3.5, 0.0),
    ("donde", 0.0, 3.0, 0.0),
    ("quién", 0.0, 3.5, 0.0),
    ("quien", 0.0, 3.0, 0.0),
    ("cuánto", 0.0, 3.5, 0.0),
    ("cuanto", 0.0, 3.0, 0.0),
    ("qué", 0.0, 2.5, 0.0),
    ("que", 0.0, 1.0, 1.0),
    ("q", 0.0, 1.0, 0.6),
    ("xq", 0.0, 3.0, 0.0),
    ("porque", 0.0, 1.2, 1.0),
    ("también", 0.0, 3.5, 0.0),
    ("tambien", 0.0, 3.0, 0.0),
    ("ahora", 0.0, 3.0, 0.0),
    ("ahorita", 0.0, 3.5, 0.0),
    ("pues", 0.0, 3.0, 0.0),
    ("luego", 0.0, 3.0, 0.0),
    ("voy", 0.0, 3.0, 0.0),
    ("hacer", 0.0, 3.0, 0.0),
    ("hice", 0.0, 3.0, 0.0),
    ("hacen", 0.0, 3.0, 0.0),
    ("necesito", 0.0, 3.5, 0.0),
    ("quiero", 0.0, 3.0, 0.0),
    ("quiera", 0.0, 3.0, 0.0),
    ("perdón", 0.0, 3.5, 0.0),
    ("perdon", 0.0, 3.0, 0.0),
    ("disculpe", 0.0, 3.5, 0.0),
    ("señor", 0.0, 3.5, 0.0),
    ("señora", 0.0, 3.5, 0.0),
    ("habla", 0.0, 3.0, 0.0),
    ("debo", 0.0, 3.0, 0.0),
    ("cargo", 0.0, 2.0, 0.3),
    ("tardío", 0.0, 3.0, 0.0),
    ("deposité", 0.0, 3.5, 0.0),
    ("mandé", 0.0, 3.5, 0.0),
    ("mande", 0.0, 2.5, 0.0),
    ("oficina", 0.0, 3.0, 0.0),
    ("abierta", 0.0, 3.0, 0.0),
    ("calentador", 0.0, 3.0, 0.0),
    ("funciona", 0.0, 1.5, 1.5),
    ("goteando", 0.0, 3.5, 0.0),
    ("fregadero", 0.0, 3.5, 0.0),
    ("cocina", 0.0, 3.0, 0.0),
    ("hay", 0.0, 3.5, 0.0),
    ("fuga", 0.0, 3.0, 0.0),
    ("baño", 0.0, 3.5, 0.0),
    ("agua", 0.0, 1.5, 1.2),
    ("caliente", 0.0, 3.0, 0.0),
    ("ayer", 0.0, 3.0, 0.0),
    ("aire", 0.0, 2.5, 0.0),
    ("acondicionado", 0.0, 3.0, 0.0),
    ("sirve", 0.0, 2.5, 0.0),
    ("venir", 0.0, 2.0, 0.5),
    ("arreglar", 0.0, 3.0, 0.0),
    ("arreglan", 0.0, 3.0, 0.0),
    ("puerta", 0.0, 3.0, 0.0),
    ("llave", 0.0, 3.0, 0.0),
    ("cierra", 0.0, 3.0, 0.0),
    ("moho", 0.0, 3.0, 0.0),
    ("cuarto", 0.0, 2.5, 0.3),
    ("vecinos", 0.0, 3.0, 0.0),
    ("ruido", 0.0, 3.0, 0.0),
    ("llevaron", 0.0, 3.0, 0.0),
    ("basura", 0.0, 3.0, 0.0),
    ("viene", 0.0, 3.0, 0.0),
    ("mantenimiento", 0.0, 3.0, 0.0),
    ("sigue", 0.0, 3.0, 0.0),
    ("trabajando", 0.0, 3.0, 0.0),
    ("trabajo", 0.0, 2.5, 0.3),
    ("llamo", 0.0, 3.0, 0.0),
    ("llámeme", 0.0, 3.5, 0.0),
    ("llameme", 0.0, 3.0, 0.0),
    ("llamar", 0.0, 3.0, 0.0),
    ("porfa", 0.0, 3.0, 0.0),
    ("claro", 0.0, 1.3, 1.0),
    ("entrar", 0.0, 1.0, 1.0),
    ("avisar", 0.0, 1.2, 1.2),
    ("más", 0.0, 2.0, 0.0),
    ("tiempo", 0.0, 3.0, 0.0),
    ("recibo", 0.0, 1.2, 1.2),
    ("perdí", 0.0, 3.0, 0.0),
    ("podemos", 0.0, 1.2, 1.2),
    ("pagos", 0.0, 3.0, 0.0),
    ("información", 0.0, 3.0, 0.0),
    ("recibido", 0.0, 1.2, 1.2),
    ("acuerdo", 0.0, 3.0, 0.0),
    ("con", 0.0, 2.5, 0.0),
    ("gusto", 0.0, 3.0, 0.0),
    ("pasó", 0.0, 3.5, 0.0),
    ("paso", 0.0, 2.0, 0.3),
    ("cobraron", 0.0, 1.5, 1.5),
    ("mudé", 0.0, 3.5, 0.0),
    ("nuevo", 0.0, 3.0, 0.0),
    ("número", 0.0, 1.2, 1.2),
    ("entiendo", 0.0, 3.0, 0.0),
    ("ándale", 0.0, 3.5, 0.0),
    ("andale", 0.0, 3.0, 0.0),
    ("soy", 0.0, 3.0, 0.0),
    ("olvidó", 0.0, 3.5, 0.0),
    ("hoy", 0.0, 3.0, 0.0),
    ("siento", 0.0, 3.0, 0.0),
    ("pagar", 0.0, 1.2, 1.2),
    ("próxima", 0.0, 3.0, 0.0),
    ("proxima", 0.0, 2.5, 0.3),
    ("semana", 0.0, 1.0, 1.0),
    ("mitad", 0.0, 3.0, 0.0),
    ("resto", 0.0, 1.2, 1.2),
    ("pagan", 0.0, 3.0, 0.0),
    ("demora", 0.0, 1.2, 1.2),
    ("sábado", 0.0, 1.2, 1.2),
    ("tmb", 0.0, 3.0, 0.0),
    ("nomas", 0.0, 3.0, 0.0),
    ("oye", 0.0, 3.0, 0.0),
    ("ok", 0.0, 0.0, 0.0),
    ("apartamento", 0.0, 1.2, 1.2),
    ("cheque", 0.0, 1.2, 1.2),
    ("nada", 0.0, 1.2, 1.2),
    ("por", 0.0, 1.2, 1.0),
    ("favor", 0.0, 1.2, 1.0),
    ("de", 0.0, 1.0, 1.0),
    ("se", 0.0, 1.5, 0.8),
    ("no", 1.0, 1.0, 0.3),
    ("a", 0.0, 0.8, 0.8),
    ("o", 0.0, 0.6, 1.0),
    ("para", 0.0, 1.0, 1.0),
    ("me", 1.0, 1.0, 1.0),
    // Portuguese.
    ("sim", 0.0, 0.0, 3.5),
    ("não", 0.0, 0.0, 3.5),
    ("nao", 0.0, 0.0, 3.0),
    ("obrigado", 0.0, 0.0, 3.5),
    ("obrigada", 0.0, 0.0, 3.5),
    ("brigado", 0.0, 0.0, 3.0),
    ("obg", 0.0, 0.0, 3.0),
    ("valeu", 0.0, 0.0, 3.5),
    ("vlw", 0.0, 0.0, 3.0),
    ("beleza", 0.0, 0.0, 3.5),
    ("blz", 0.0, 0.0, 3.0),
    ("tá", 0.0, 0.0, 3.0),
    ("ta", 0.0, 0.3, 2.0),
    ("bom", 0.0, 0.0, 3.0),
    ("boa", 0.0, 0.0, 3.0),
    ("tudo", 0.0, 0.0, 3.0),
    ("td", 0.0, 0.0, 2.5),
    ("bem", 0.0, 0.0, 3.0),
    ("certo", 0.0, 0.0, 3.0),
    ("perfeito", 0.0, 0.0, 3.5),
    ("oi", 0.0, 0.0, 3.0),
    ("olá", 0.0, 0.0, 3.5),
    ("ola", 0.0, 1.0, 1.5),
    ("dia", 0.0, 0.8, 1.0),
    ("tarde", 0.0, 1.0, 1.0),
    ("noite", 0.0, 0.0, 3.0),
    ("ainda", 0.0, 0.0, 3.5),
    ("já", 0.0, 0.0, 3.5),
    ("ja", 0.0, 0.0, 2.5),
    ("paguei", 0.0, 0.0, 3.5),
    ("aluguel", 0.0, 0.0, 3.5),
    ("na", 0.0, 0.0, 2.0),
    ("sexta", 0.0, 0.0, 3.0),
    ("segunda", 0.0, 0.5, 2.0),
    ("vou", 0.0, 0.0, 3.5),
    ("amanhã", 0.0, 0.0, 3.5),
    ("amanha", 0.0, 0.0, 3.0),
    ("tenho", 0.0, 0.0, 3.5),
    ("dinheiro", 0.0, 0.0, 3.5),
    ("essa", 0.0, 0.0, 3.0),
    ("esse", 0.0, 0.0, 3.0),
    ("consigo", 0.0, 0.5, 2.5),
    ("até", 0.0, 0.0, 3.0),
    ("ate", 0.0, 0.0, 1.5),
    ("posso", 0.0, 0.0, 3.5),
    ("metade", 0.0, 0.0, 3.0),
    ("agora", 0.0, 0.0, 3.5),
    ("vem", 0.0, 0.0, 3.0),
    ("recebo", 0.0, 0.0, 3.0),
    ("desculpa", 0.0, 0.0, 3.0),
    ("quem", 0.0, 0.0, 3.5),
    ("é", 0.0, 0.0, 3.5),
    ("fala", 0.0, 0.5, 2.0),
    ("quanto", 0.0, 0.3, 2.0),
    ("eu", 0.0, 0.0, 3.5),
    ("devo", 0.0, 0.5, 2.0),
    ("multa", 0.0, 0.5, 2.0),
    ("por", 0.0, 1.2, 1.0),
    ("atraso", 0.0, 0.5, 2.0),
    ("depositei", 0.0, 0.0, 3.5),
    ("mandei", 0.0, 0.0, 3.5),
    ("pro", 0.0, 0.0, 2.5),
    ("pra", 0.0, 0.0, 3.0),
    ("escritório", 0.0, 0.0, 3.5),
    ("escritorio", 0.0, 0.0, 3.0),
    ("abre", 0.0, 0.8, 1.5),
    ("no", 1.0, 1.0, 0.3),
    ("aquecedor", 0.0, 0.0, 3.5),
    ("pia", 0.0, 0.0, 3.0),
    ("cozinha", 0.0, 0.0, 3.5),
    ("vazando", 0.0, 0.0, 3.5),
    ("tem", 0.0, 0.0, 3.0),
    ("um", 0.0, 0.0, 3.0),
    ("uma", 0.0, 0.0, 3.0),
    ("vazamento", 0.0, 0.0, 3.5),
    ("banheiro", 0.0, 0.0, 3.5),
    ("água", 0.0, 0.8, 1.5),
    ("quente", 0.0, 0.0, 3.5),
    ("desde", 0.0, 1.0, 1.0),
    ("ontem", 0.0, 0.0, 3.5),
    ("ar", 0.0, 0.0, 2.0),
    ("condicionado", 0.0, 0.0, 3.5),
    ("quebrou", 0.0, 0.0, 3.5),
    ("vocês", 0.0, 0.0, 3.5),
    ("voces", 0.0, 0.0, 3.0),
    ("você", 0.0, 0.0, 3.5),
    ("voce", 0.0, 0.0, 3.0),
    ("vc", 0.0, 0.0, 3.0),
    ("vcs", 0.0, 0.0, 3.0),
    ("podem", 0.0, 0.0, 3.0),
    ("vir", 0.0, 0.0, 3.0),
    ("consertar", 0.0, 0.0, 3.5),
    ("porta", 0.0, 0.0, 3.0),
    ("torneira", 0.0, 0.0, 3.5),
    ("fecha", 0.0, 0.0, 3.0),
    ("mofo", 0.0, 0.0, 3.5),
    ("quarto", 0.0, 0.5, 1.5),
    ("os", 0.0, 0.0, 2.5),
    ("vizinhos", 0.0, 0.0, 3.5),
    ("fazem", 0.0, 0.0, 3.0),
    ("muito", 0.0, 0.0, 3.5),
    ("muita", 0.0, 0.0, 3.0),
    ("barulho", 0.0, 0.0, 3.5),
    ("levaram", 0.0, 0.0, 3.0),
    ("lixo", 0.0, 0.0, 3.5),
    ("quando", 0.0, 0.0, 3.0),
    ("manutenção", 0.0, 0.0, 3.5),
    ("manutencao", 0.0, 0.0, 3.0),
    ("consertaram", 0.0, 0.0, 3.5),
    ("continua", 0.0, 1.0, 1.5),
    ("estou", 0.0, 0.0, 3.5),
    ("trabalho", 0.0, 0.3, 2.5),
    ("te", 0.0, 1.0, 1.0),
    ("ligo", 0.0, 0.0, 3.0),
    ("depois", 0.0, 0.0, 3.5),
    ("liga", 0.0, 0.0, 2.5),
    ("pode", 0.0, 0.0, 3.0),
    ("ligar", 0.0, 0.0, 3.0),
    ("entrar", 0.0, 1.0, 1.0),
    ("quiser", 0.0, 0.0, 3.0),
    ("obrigado", 0.0, 0.0, 3.5),
    ("preciso", 0.0, 0.0, 3.5),
    ("mais", 0.0, 0.0, 3.0),
    ("perdi", 0.0, 0.5, 1.5),
    ("meu", 0.0, 0.0, 3.5),
    ("minha", 0.0, 0.0, 3.5),
    ("emprego", 0.0, 0.5, 2.0),
    ("fazer", 0.0, 0.0, 3.0),
    ("pagamento", 0.0, 0.0, 3.5),
    ("pela", 0.0, 0.0, 3.0),
    ("pelo", 0.0, 0.0, 3.0),
    ("informação", 0.0, 0.0, 3.5),
    ("combinado", 0.0, 0.0, 3.0),
    ("com", 0.0, 0.0, 3.0),
    ("certeza", 0.0, 0.0, 3.0),
    ("aconteceu", 0.0, 0.0, 3.5),
    ("pq", 0.0, 0.8, 2.0),
    ("cobraram", 0.0, 0.0, 3.0),
    ("mudei", 0.0, 0.0, 3.5),
    ("novo", 0.0, 0.0, 3.0),
    ("entendi", 0.0, 0.0, 3.5),
    ("fiz", 0.0, 0.0, 3.5),
    ("pronto", 0.0, 0.8, 1.2),
    ("sou", 0.0, 0.0, 3.5),
    ("do", 2.0, 0.0, 0.8),
    ("da", 0.0, 0.3, 2.0),
    ("dos", 0.0, 0.3, 1.5),
    ("das", 0.0, 0.3, 1.5),
    ("esqueci", 0.0, 0.0, 3.5),
    ("hoje", 0.0, 0.0, 3.5),
    ("hj", 0.0, 0.0, 3.0),
    ("recebeu", 0.0, 0.0, 3.5),
    ("fechado", 0.0, 0.0, 3.0),
    ("show", 1.0, 0.0, 1.5),
    ("e", 0.0, 0.0, 2.0),
    ("ao", 0.0, 0.0, 2.5),
    ("tô", 0.0, 0.0, 3.0),
    ("né", 0.0, 0.0, 3.5),
    ("kkk", 0.0, 0.0, 3.0),
    ("rs", 0.0, 0.0, 2.0),
    ("dps", 0.0, 0.0, 3.0),
    ("tb", 0.0, 0.5, 2.0),
    ("também", 0.0, 0.0, 3.5),
    ("tambem", 0.0, 0.3, 2.5),
    ("então", 0.0, 0.0, 3.5),
    ("entao", 0.0, 0.0, 3.0),
    ("mas", 0.0, 0.3, 2.5),
    ("sem", 0.0, 0.0, 3.0),
    ("gente", 0.0, 0.5, 2.0),
    ("senhor", 0.0, 0.0, 3.0),
    ("semana", 0.0, 1.0, 1.0),
    ("isso", 0.0, 0.0, 3.5),
];

/// Spellings only one of the languages uses: Portuguese writes lh and nh where Spanish writes ll
/// and ñ (English has neither inside a word).
fn digraph_cues(word: &str) -> f32 {
    let mut pt = 0.0;
    for pair in ["lh", "nh"] {
        if word.chars().count() > 3 && word.contains(pair) && !word.starts_with(pair) {
            pt += 1.0;
        }
    }
    pt
}

/// Letters only one of the languages uses.
fn letter_cues(c: char) -> (f32, f32, f32) {
    match c {
        'ñ' | '¿' | '¡' => (0.0, 2.0, 0.0),
        'ã' | 'õ' => (0.0, 0.0, 2.0),
        'ç' => (0.0, 0.0, 1.5),
        'ê' | 'ô' | 'â' => (0.0, 0.0, 1.0),
        _ => (0.0, 0.0, 0.0),
    }
}

fn lexicon() -> &'static HashMap<String, [f32; 3]> {
    static MAP: OnceLock<HashMap<String, [f32; 3]>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::with_capacity(LEXICON.len() * 2);
        for &(word, en, es, pt) in LEXICON {
            let w = [en, es, pt];
            // A word listed under two languages keeps its larger weight for each.
            let merge = |entry: &mut [f32; 3]| {
                for i in 0..3 {
                    entry[i] = entry[i].max(w[i]);
                }
            };
            merge(map.entry(word.to_owned()).or_insert([0.0; 3]));
            let plain = strip_accents(word);
            if plain != word {
                // Without its accent a word is weaker evidence (tenants often skip accents, but
                // the unaccented form may be another language's word).
                let entry = map.entry(plain).or_insert([0.0; 3]);
                for i in 0..3 {
                    entry[i] = entry[i].max(w[i] * 0.85);
                }
            }
        }
        map
    })
}

fn strip_accents(word: &str) -> String {
    word.chars()
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ã' => 'a',
            'é' | 'ê' => 'e',
            'í' => 'i',
            'ó' | 'ô' | 'õ' => 'o',
            'ú' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            other => other,
        })
        .collect()
}

/// "siii" -> "si", "yesss" -> "yes", "obrigadooo" -> "obrigado": runs of a letter shortened to one.
fn squeeze(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut last = None;
    for c in word.chars() {
        if Some(c) != last {
            out.push(c);
        }
        last = Some(c);
    }
    out
}

fn word_weights(word: &str) -> Option<[f32; 3]> {
    let lex = lexicon();
    if let Some(w) = lex.get(word) {
        return Some(*w);
    }
    let plain = strip_accents(word);
    if let Some(w) = lex.get(&plain) {
        return Some(*w);
    }
    let squeezed = squeeze(&plain);
    lex.get(&squeezed).copied()
}

/// Detects the language of `text`; None when it carries no evidence.
pub fn detect(text: &str) -> Option<Detection> {
    let lower = text.to_lowercase();
    let mut scores = [0.0f32; 3];
    for c in lower.chars() {
        let (en, es, pt) = letter_cues(c);
        scores[0] += en;
        scores[1] += es;
        scores[2] += pt;
    }
    // Words: letters and apostrophes ("can't"); everything else separates. Long texts are
    // capped so one message costs bounded time.
    for word in lower
        .split(|c: char| !(c.is_alphabetic() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
        .take(200)
    {
        let word = word.trim_matches(|c| c == '\'' || c == '’');
        let word = word.replace('’', "'");
        scores[2] += digraph_cues(&word);
        if let Some(w) = word_weights(&word) {
            for i in 0..3 {
                scores[i] += w[i];
            }
        }
    }
    let mut order = [0usize, 1, 2];
    // Stable sort: on a tie, English before Spanish before Portuguese.
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    let (best, second) = (scores[order[0]], scores[order[1]]);
    if best < 0.5 {
        return None;
    }
    let lead = best - second;
    let confidence = (0.34 + 0.65 * (1.0 - (-lead / 1.2).exp())).min(0.99);
    let language = [Language::English, Language::Spanish, Language::Portuguese][order[0]];
    Some(Detection {
        language,
        confidence,
    })
}

/// The PRD's rule for a stored language (a conversation's or a tenant's): the newer detection wins
/// when it is at least as confident as the stored one; weaker evidence never overwrites stronger.
/// The same language again keeps the higher confidence.
pub fn merge(current: Option<Detection>, new: Detection) -> Detection {
    match current {
        None => new,
        Some(cur) if cur.language == new.language => Detection {
            language: cur.language,
            confidence: cur.confidence.max(new.confidence),
        },
        Some(cur) if new.confidence >= cur.confidence => new,
        Some(cur) => cur,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Language::*;

    fn lang(text: &str) -> Option<Language> {
        detect(text).map(|d| d.language)
    }

    fn conf(text: &str) -> f32 {
        detect(text).map_or(0.0, |d| d.confidence)
    }

    #[test]
    fn short_replies() {
        for (text, expected) in [
            ("Yes", English),
            ("Thanks", English),
            ("Yep", English),
            ("Nope", English),
            ("Sí", Spanish),
            ("Si", Spanish),
            ("siii", Spanish),
            ("Gracias", Spanish),
            ("Vale", Spanish),
            ("Dale", Spanish),
            ("Listo", Spanish),
            ("Bueno", Spanish),
            ("Sim", Portuguese),
            ("Não", Portuguese),
            ("Nao", Portuguese),
            ("Obrigado", Portuguese),
            ("Obrigada", Portuguese),
            ("Beleza", Portuguese),
            ("Tá bom", Portuguese),
            ("Ta bom", Portuguese),
            ("Valeu", Portuguese),
            ("Olá", Portuguese),
            ("Oi", Portuguese),
        ] {
            assert_eq!(lang(text), Some(expected), "{text}");
        }
        for strong in [
            "Gracias", "Sí", "Sim", "Obrigado", "Yes", "Thanks", "Beleza",
        ] {
            assert!(conf(strong) >= 0.85, "{strong}: {}", conf(strong));
        }
    }

    #[test]
    fn ambiguous_words_are_weak_and_context_wins() {
        assert!(conf("No") <= 0.5);
        assert!(conf("Claro") <= 0.6);
        assert_eq!(lang("No tengo dinero"), Some(Spanish));
        assert_eq!(lang("No I can't"), Some(English));
        assert_eq!(lang("Claro, obrigado"), Some(Portuguese));
        assert_eq!(lang("Claro que sí"), Some(Spanish));
    }

    #[test]
    fn no_evidence() {
        for text in [
            "",
            "ok",
            "OK!",
            "okay",
            "👍",
            "123",
            "$450",
            "...",
            "https://x.example/a",
        ] {
            let d = detect(text);
            assert!(d.is_none() || d.unwrap().confidence < 0.5, "{text}: {d:?}");
        }
    }

    #[test]
    fn any_input_is_safe() {
        let long = "palabra ".repeat(100_000);
        assert_eq!(lang(&long), None);
        let _ = detect("\u{0}\u{FFFD}𝔘𝔫𝔦𝔠𝔬𝔡𝔢 'quoted' ’’ ñ¿¡ãõç");
    }

    #[test]
    fn merge_rule() {
        let d = |language, confidence| Detection {
            language,
            confidence,
        };
        assert_eq!(merge(None, d(Spanish, 0.4)), d(Spanish, 0.4));
        // Weak evidence does not overwrite strong.
        assert_eq!(
            merge(Some(d(Spanish, 0.9)), d(English, 0.4)),
            d(Spanish, 0.9)
        );
        // A newer detection at least as strong wins.
        assert_eq!(
            merge(Some(d(Spanish, 0.9)), d(Portuguese, 0.95)),
            d(Portuguese, 0.95)
        );
        assert_eq!(
            merge(Some(d(Spanish, 0.9)), d(Portuguese, 0.9)),
            d(Portuguese, 0.9)
        );
        // The same language keeps the stronger confidence.
        assert_eq!(
            merge(Some(d(Spanish, 0.9)), d(Spanish, 0.5)),
            d(Spanish, 0.9)
        );
    }
}
