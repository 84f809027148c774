//! The control API's locations, contact cards, polls and votes: requests
//! read into what a virtual phone sends, and inbox content shown back.

use crate::proto::sim::inbox_message::Content as InboxOneof;
use crate::proto::sim::{
    ContactCard as ApiCard, Contacts as ApiContacts, Location as ApiLocation, Poll as ApiPoll,
    PollVote as ApiVote,
};
use crate::wa::content::{ContactCard, Contacts, Location, Poll};

use super::{InboxContent, PhoneContent, SimError};

pub(super) fn location(l: Option<ApiLocation>) -> Result<PhoneContent, SimError> {
    let l = l.ok_or_else(|| SimError::InvalidContent("location missing".into()))?;
    let finite = l.latitude.is_finite() && l.longitude.is_finite();
    if !finite || l.latitude.abs() > 90.0 || l.longitude.abs() > 180.0 {
        return Err(SimError::InvalidContent(format!(
            "({}, {}) is not a place in degrees",
            l.latitude, l.longitude
        )));
    }
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    Ok(PhoneContent::Location(Location {
        latitude: l.latitude,
        longitude: l.longitude,
        name: some(l.name),
        address: some(l.address),
        url: some(l.url),
        live: false,
        caption: some(l.caption),
        accuracy_meters: None,
    }))
}

pub(super) fn contacts(c: Option<ApiContacts>) -> Result<PhoneContent, SimError> {
    let c = c.ok_or_else(|| SimError::InvalidContent("contacts missing".into()))?;
    if c.cards.is_empty() {
        return Err(SimError::InvalidContent("no card".into()));
    }
    Ok(PhoneContent::Contacts(Contacts {
        display_name: Some(c.display_name).filter(|n| !n.is_empty()),
        cards: c
            .cards
            .into_iter()
            .map(|card| ContactCard {
                display_name: card.display_name,
                vcard: card.vcard,
            })
            .collect(),
    }))
}

pub(super) fn poll(p: Option<ApiPoll>) -> Result<PhoneContent, SimError> {
    let p = p.ok_or_else(|| SimError::InvalidContent("poll missing".into()))?;
    if p.options.is_empty() {
        return Err(SimError::InvalidContent("a poll needs options".into()));
    }
    Ok(PhoneContent::Poll(Poll {
        name: p.name,
        options: p.options,
        selectable: p.selectable_count,
    }))
}

pub(super) fn vote(v: Option<ApiVote>) -> Result<PhoneContent, SimError> {
    let v = v.ok_or_else(|| SimError::InvalidContent("vote missing".into()))?;
    if v.poll_id.is_empty() {
        return Err(SimError::InvalidContent("vote.poll_id missing".into()));
    }
    Ok(PhoneContent::Vote {
        poll_id: v.poll_id,
        options: v.options,
    })
}

/// What an inbox entry shows of its content.
pub(super) fn inbox(content: InboxContent) -> InboxOneof {
    match content {
        InboxContent::Location(l) => InboxOneof::Location(ApiLocation {
            latitude: l.latitude,
            longitude: l.longitude,
            name: l.name.unwrap_or_default(),
            address: l.address.unwrap_or_default(),
            url: l.url.unwrap_or_default(),
            live: l.live,
            caption: l.caption.unwrap_or_default(),
        }),
        InboxContent::Contacts(c) => InboxOneof::Contacts(ApiContacts {
            display_name: c.display_name.unwrap_or_default(),
            cards: c
                .cards
                .into_iter()
                .map(|card| ApiCard {
                    display_name: card.display_name,
                    vcard: card.vcard,
                })
                .collect(),
        }),
        InboxContent::Poll(p) => InboxOneof::Poll(ApiPoll {
            name: p.name,
            options: p.options,
            selectable_count: p.selectable,
        }),
        InboxContent::Vote { poll_id, options } => {
            let (options, error) = match options {
                Ok(options) => (options, String::new()),
                Err(error) => (Vec::new(), error),
            };
            InboxOneof::PollVote(ApiVote {
                poll_id,
                options,
                error,
            })
        }
    }
}
