//! TEMPORARY stub with the agreed API so dependants compile; replaced by the real detector.
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
        match s.to_ascii_lowercase().as_str() {
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
    pub confidence: f32,
}
pub fn detect(_text: &str) -> Option<Detection> {
    None
}
pub fn merge(current: Option<Detection>, new: Detection) -> Detection {
    match current {
        Some(c) if c.confidence > new.confidence => c,
        _ => new,
    }
}
