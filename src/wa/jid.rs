//! WhatsApp addresses: [`Jid`] (user, agent, device, server) with its string
//! form, and [`PhoneNumber`], the E.164 number a user JID is made from.
//! Pure data; must not import anything outside `std`.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// Phone-number accounts and their devices.
pub const DEFAULT_USER_SERVER: &str = "s.whatsapp.net";
/// Groups.
pub const GROUP_SERVER: &str = "g.us";
/// Hidden-number ("LID") accounts and their devices.
pub const LID_SERVER: &str = "lid";
/// Broadcast lists and the status broadcast.
pub const BROADCAST_SERVER: &str = "broadcast";
/// Channels.
pub const NEWSLETTER_SERVER: &str = "newsletter";
/// Business accounts hosted by Meta (always written as AD_JID on the wire).
pub const HOSTED_SERVER: &str = "hosted";
/// LID variant of [`HOSTED_SERVER`].
pub const HOSTED_LID_SERVER: &str = "hosted.lid";
/// Messenger accounts (FB_JID on the wire).
pub const MESSENGER_SERVER: &str = "msgr";
/// Third-party interoperability accounts (INTEROP_JID on the wire).
pub const INTEROP_SERVER: &str = "interop";
/// Bots.
pub const BOT_SERVER: &str = "bot";
/// Pre-multi-device name of [`DEFAULT_USER_SERVER`].
pub const LEGACY_USER_SERVER: &str = "c.us";

/// Why a JID or phone number string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JidError {
    #[error("empty JID")]
    Empty,
    #[error("JID {0:?} has more than one '@'")]
    TooManyAt(String),
    #[error("JID {0:?} has an empty server part")]
    EmptyServer(String),
    #[error("JID {0:?} contains whitespace or a control character")]
    BadCharacter(String),
    #[error("JID {0:?}: the user part must be user, user:device or user.agent:device")]
    BadUserPart(String),
    #[error("JID {jid:?}: {what} {value:?} is not a number in range")]
    BadNumber {
        jid: String,
        what: &'static str,
        value: String,
    },
    #[error("phone number {input:?}: character {ch:?} is not allowed (use digits, optionally with a leading '+', spaces, '-', '.', '(' or ')')")]
    PhoneCharacter { input: String, ch: char },
    #[error("phone number {input:?} has {digits} digits; an international number has 7 to 15")]
    PhoneLength { input: String, digits: usize },
    #[error("phone number {input:?} starts with 0; write it with its country code, without a trunk or exit prefix")]
    PhoneLeadingZero { input: String },
}

/// A WhatsApp address.
///
/// `agent` and `device` address one device of an account (AD-JID); both are
/// 0 for the account itself. `integrator` is only meaningful on
/// [`INTEROP_SERVER`]. The string form (`Display`/`FromStr`) is
/// `user[.agent][:device]@server`, or the server alone when `user` is empty;
/// `integrator` has no string form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid {
    pub user: String,
    pub agent: u8,
    pub device: u16,
    pub integrator: u16,
    /// Static for the well-known servers (no allocation); owned otherwise.
    pub server: Cow<'static, str>,
}

impl Jid {
    /// The account `user@server` (device 0).
    pub fn new(user: impl Into<String>, server: impl Into<Cow<'static, str>>) -> Self {
        Self {
            user: user.into(),
            agent: 0,
            device: 0,
            integrator: 0,
            server: server.into(),
        }
    }

    /// Device `device` of the account `user@server`.
    pub fn with_device(
        user: impl Into<String>,
        device: u16,
        server: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            device,
            ..Self::new(user, server)
        }
    }

    /// `s.whatsapp.net` itself: the address of WhatsApp's server in stanzas.
    pub fn server_jid() -> Self {
        Self::new("", DEFAULT_USER_SERVER)
    }

    /// The account this device belongs to (agent and device cleared).
    pub fn to_non_ad(&self) -> Self {
        Self {
            user: self.user.clone(),
            agent: 0,
            device: 0,
            integrator: self.integrator,
            server: self.server.clone(),
        }
    }

    pub fn is_group(&self) -> bool {
        self.server == GROUP_SERVER
    }

    pub fn is_lid(&self) -> bool {
        self.server == LID_SERVER
    }

    /// A phone-number account or one of its devices (`s.whatsapp.net`).
    pub fn is_user(&self) -> bool {
        self.server == DEFAULT_USER_SERVER
    }

    /// WhatsApp's server: empty user on `s.whatsapp.net`.
    pub fn is_server(&self) -> bool {
        self.user.is_empty() && self.server == DEFAULT_USER_SERVER
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.agent > 0 {
            write!(
                f,
                "{}.{}:{}@{}",
                self.user, self.agent, self.device, self.server
            )
        } else if self.device > 0 {
            write!(f, "{}:{}@{}", self.user, self.device, self.server)
        } else if !self.user.is_empty() {
            write!(f, "{}@{}", self.user, self.server)
        } else {
            f.write_str(&self.server)
        }
    }
}

impl FromStr for Jid {
    type Err = JidError;

    /// Accepts `server`, `@server`, `user@server`, `user:device@server` and
    /// the legacy `user.agent[:device]@server`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(JidError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(JidError::BadCharacter(s.to_owned()));
        }
        let Some((user_part, server)) = s.split_once('@') else {
            return Ok(Self::new("", known_server(s)));
        };
        if server.contains('@') {
            return Err(JidError::TooManyAt(s.to_owned()));
        }
        if server.is_empty() {
            return Err(JidError::EmptyServer(s.to_owned()));
        }
        let number = |what: &'static str, value: &str| JidError::BadNumber {
            jid: s.to_owned(),
            what,
            value: value.to_owned(),
        };
        let mut jid = Self::new("", known_server(server));
        if let Some((user, ad)) = user_part.split_once('.') {
            let (agent, device) = match ad.split_once(':') {
                Some((agent, device)) => (agent, Some(device)),
                None => (ad, None),
            };
            if agent.contains('.') || device.is_some_and(|d| d.contains(':')) {
                return Err(JidError::BadUserPart(s.to_owned()));
            }
            jid.agent = parse_decimal(agent).ok_or_else(|| number("agent", agent))?;
            if let Some(device) = device {
                jid.device = parse_decimal(device).ok_or_else(|| number("device", device))?;
            }
            jid.user = user.to_owned();
        } else if let Some((user, device)) = user_part.split_once(':') {
            if device.contains(':') {
                return Err(JidError::BadUserPart(s.to_owned()));
            }
            jid.device = parse_decimal(device).ok_or_else(|| number("device", device))?;
            jid.user = user.to_owned();
        } else {
            jid.user = user_part.to_owned();
        }
        Ok(jid)
    }
}

/// The server as a static string when it is one of the well-known ones.
fn known_server(server: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 12] = [
        DEFAULT_USER_SERVER,
        GROUP_SERVER,
        LID_SERVER,
        BROADCAST_SERVER,
        NEWSLETTER_SERVER,
        HOSTED_SERVER,
        HOSTED_LID_SERVER,
        MESSENGER_SERVER,
        INTEROP_SERVER,
        BOT_SERVER,
        LEGACY_USER_SERVER,
        "call",
    ];
    KNOWN
        .iter()
        .find(|k| **k == server)
        .map_or_else(|| Cow::Owned(server.to_owned()), |k| Cow::Borrowed(*k))
}

/// Plain ASCII decimal only: `u16::from_str` would also take a leading '+'.
fn parse_decimal<T: FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An international phone number in E.164 form: 7 to 15 digits, the first
/// not 0, stored without the '+'.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// The digits, without '+'.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account JID `digits@s.whatsapp.net`.
    pub fn to_jid(&self) -> Jid {
        Jid::new(self.0.clone(), DEFAULT_USER_SERVER)
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}", self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = JidError;

    /// Accepts `+15551234567`, `15551234567` and the same with spaces, '-',
    /// '.', '(' or ')' between digits; a '+' only before the first digit.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digits = String::with_capacity(15);
        let mut seen_plus = false;
        for ch in s.chars() {
            match ch {
                '0'..='9' => digits.push(ch),
                ' ' | '-' | '.' | '(' | ')' => {}
                '+' if digits.is_empty() && !seen_plus => seen_plus = true,
                _ => {
                    return Err(JidError::PhoneCharacter {
                        input: s.to_owned(),
                        ch,
                    })
                }
            }
        }
        if !(7..=15).contains(&digits.len()) {
            return Err(JidError::PhoneLength {
                input: s.to_owned(),
                digits: digits.len(),
            });
        }
        if digits.starts_with('0') {
            return Err(JidError::PhoneLeadingZero {
                input: s.to_owned(),
            });
        }
        Ok(Self(digits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        s.parse().expect("test JID parses")
    }

    #[test]
    fn parses_the_string_forms() {
        assert_eq!(jid("123@s.whatsapp.net"), Jid::new("123", "s.whatsapp.net"));
        assert_eq!(
            jid("123:7@s.whatsapp.net"),
            Jid::with_device("123", 7, "s.whatsapp.net")
        );
        assert_eq!(jid("9876:12@lid"), Jid::with_device("9876", 12, "lid"));
        assert_eq!(jid("120363-456@g.us"), Jid::new("120363-456", "g.us"));
        assert_eq!(jid("s.whatsapp.net"), Jid::server_jid());
        assert_eq!(jid("@s.whatsapp.net"), Jid::server_jid());
        assert_eq!(jid("@bot"), Jid::new("", "bot"));
        assert_eq!(jid("status@broadcast"), Jid::new("status", "broadcast"));
        let legacy = jid("123.1:4@s.whatsapp.net");
        assert_eq!((legacy.agent, legacy.device), (1, 4));
        assert_eq!(legacy.user, "123");
        let agent_only = jid("123.2@s.whatsapp.net");
        assert_eq!((agent_only.agent, agent_only.device), (2, 0));
    }

    #[test]
    fn rejects_malformed_jids() {
        for bad in [
            "",
            "a@b@c",
            "123@",
            "123:x@s.whatsapp.net",
            "123:1:2@s.whatsapp.net",
            "123:70000@s.whatsapp.net",
            "123:+1@s.whatsapp.net",
            "1.2.3@s.whatsapp.net",
            "1.300:1@s.whatsapp.net",
            "12 3@s.whatsapp.net",
        ] {
            assert!(bad.parse::<Jid>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        for s in [
            "123@s.whatsapp.net",
            "123:7@s.whatsapp.net",
            "123.1:4@s.whatsapp.net",
            "42:3@lid",
            "s.whatsapp.net",
            "g.us",
            "120363-456@g.us",
        ] {
            assert_eq!(jid(s).to_string(), s);
            assert_eq!(jid(&jid(s).to_string()), jid(s));
        }
        assert_eq!(jid("@s.whatsapp.net").to_string(), "s.whatsapp.net");
        assert_eq!(
            jid("123:0@s.whatsapp.net").to_string(),
            "123@s.whatsapp.net"
        );
    }

    #[test]
    fn predicates() {
        assert!(Jid::server_jid().is_server());
        assert!(Jid::server_jid().is_user());
        assert!(!jid("1@s.whatsapp.net").is_server());
        assert!(jid("1@g.us").is_group());
        assert!(jid("1:2@lid").is_lid());
        assert!(!jid("1@hosted.lid").is_lid());
        let ad = jid("1.3:2@s.whatsapp.net");
        assert_eq!(ad.to_non_ad(), jid("1@s.whatsapp.net"));
    }

    #[test]
    fn phone_numbers() {
        let p: PhoneNumber = "+1 (555) 123-4567".parse().expect("valid number");
        assert_eq!(p.as_str(), "15551234567");
        assert_eq!(p.to_string(), "+15551234567");
        assert_eq!(p.to_jid(), jid("15551234567@s.whatsapp.net"));
        assert_eq!(
            "49.30.1234567".parse::<PhoneNumber>(),
            Ok(PhoneNumber("49301234567".into()))
        );
        assert!(matches!(
            "+1555abc4567".parse::<PhoneNumber>(),
            Err(JidError::PhoneCharacter { ch: 'a', .. })
        ));
        assert!(matches!(
            "1+5551234567".parse::<PhoneNumber>(),
            Err(JidError::PhoneCharacter { ch: '+', .. })
        ));
        assert!(matches!(
            "123456".parse::<PhoneNumber>(),
            Err(JidError::PhoneLength { digits: 6, .. })
        ));
        assert!(matches!(
            "1234567890123456".parse::<PhoneNumber>(),
            Err(JidError::PhoneLength { digits: 16, .. })
        ));
        assert!(matches!(
            "0049301234567".parse::<PhoneNumber>(),
            Err(JidError::PhoneLeadingZero { .. })
        ));
        assert!("1234567".parse::<PhoneNumber>().is_ok());
        assert!("123456789012345".parse::<PhoneNumber>().is_ok());
        let err = "+44 20 7946 0958 ext 2"
            .parse::<PhoneNumber>()
            .expect_err("letters");
        assert!(err.to_string().contains("'e'"), "{err}");
    }
}
