//! Shared queues (`proxy_register/resolve/enqueue/dequeue_shared_queue`,
//! `proxy_on_queue_ready`), one set per tenant as its shared data: a
//! queue is named by a `vm_id` and a name, as in Envoy, and only that
//! tenant's filters reach it, whatever their `vm_id`. Bounded: at most
//! [`MAX_QUEUES`] queues per tenant, and the items waiting in them
//! together held to the tenant's `shared_data_bytes`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use super::types::Status;

/// Wakes whoever delivers `proxy_on_queue_ready` (the filter ticker).
static ENQUEUED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// An item was enqueued, or more wait: the deliverer should look.
pub fn wake_deliveries() {
    ENQUEUED.notify_one();
}

/// Returns once an item is enqueued (or was since the last call).
pub async fn wait_for_enqueues() {
    ENQUEUED.notified().await;
}

/// The most queues one tenant's filters may register.
pub(super) const MAX_QUEUES: usize = 1000;

/// What an item costs against the tenant's bound beyond its bytes (its
/// place in the queue), so that empty items are bounded too.
const ITEM_OVERHEAD: usize = 64;

/// The most `proxy_on_queue_ready` calls one filter has waiting; past it
/// an enqueue is not announced again (the items are still there to
/// dequeue), so a filter that enqueues and dequeues in a loop cannot
/// grow the list.
const MAX_PENDING_NOTIFICATIONS: usize = 1024;

/// Tokens of a filter's queues with items enqueued since its
/// `proxy_on_queue_ready` was last called for them: one entry per
/// enqueue, as Envoy calls the callback once per enqueue.
#[derive(Debug, Default)]
pub struct QueueReady {
    tokens: Mutex<VecDeque<u32>>,
}

impl QueueReady {
    /// The next token to tell the filter about.
    pub fn next(&self) -> Option<u32> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
    }

    /// Puts back `token`, first, for a call that could not be made.
    pub fn put_back(&self, token: u32) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_front(token);
    }

    /// Whether any is waiting.
    pub fn is_pending(&self) -> bool {
        !self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn push(&self, token: u32) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() < MAX_PENDING_NOTIFICATIONS {
            tokens.push_back(token);
        }
    }
}

/// One tenant's queues.
#[derive(Default)]
pub(super) struct Queues {
    /// `(vm_id, name)` -> token.
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    /// Bytes of the items waiting in all of them.
    bytes: usize,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The filter that registered it last, told of each enqueue.
    owner: Weak<QueueReady>,
}

impl Queues {
    /// Registers queue `name` of `vm_id` for `owner` (the same token if
    /// it is registered already; the owner becomes `owner`).
    pub(super) fn register(
        &mut self,
        vm_id: &str,
        name: &str,
        owner: &Arc<QueueReady>,
    ) -> Result<u32, Status> {
        let key = (vm_id.to_string(), name.to_string());
        if let Some(&token) = self.by_name.get(&key) {
            if let Some(queue) = self.queues.get_mut(&token) {
                queue.owner = Arc::downgrade(owner);
            }
            return Ok(token);
        }
        if self.queues.len() >= MAX_QUEUES {
            return Err(Status::InternalFailure);
        }
        // Tokens start at 1 and are this tenant's own.
        let token = self.queues.len() as u32 + 1;
        self.by_name.insert(key, token);
        let queue = Queue {
            items: VecDeque::new(),
            owner: Arc::downgrade(owner),
        };
        self.queues.insert(token, queue);
        Ok(token)
    }

    /// The token of queue `name` of `vm_id`, if registered.
    pub(super) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.by_name
            .get(&(vm_id.to_string(), name.to_string()))
            .copied()
    }

    /// Adds `item` to queue `token`, within `limit` bytes waiting in all
    /// the tenant's queues, and tells its owner.
    pub(super) fn enqueue(
        &mut self,
        token: u32,
        item: Vec<u8>,
        limit: usize,
    ) -> Result<(), Status> {
        let bytes = self.bytes + item.len() + ITEM_OVERHEAD;
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        if bytes > limit {
            return Err(Status::InternalFailure);
        }
        queue.items.push_back(item);
        self.bytes = bytes;
        if let Some(owner) = queue.owner.upgrade() {
            owner.push(token);
        }
        Ok(())
    }

    /// Takes the oldest item of queue `token`: `EMPTY` if there is none.
    pub(super) fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, Status> {
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        self.bytes -= item.len() + ITEM_OVERHEAD;
        Ok(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_named_by_vm_id_and_name_and_tells_its_owner() {
        let mut queues = Queues::default();
        let owner = Arc::new(QueueReady::default());
        let token = queues.register("vm", "jobs", &owner).unwrap();
        assert_eq!(queues.register("vm", "jobs", &owner), Ok(token));
        assert_eq!(queues.resolve("vm", "jobs"), Some(token));
        assert_eq!(queues.resolve("other", "jobs"), None);
        assert_eq!(queues.dequeue(token), Err(Status::Empty));
        queues.enqueue(token, b"a".to_vec(), 1000).unwrap();
        queues.enqueue(token, b"bc".to_vec(), 1000).unwrap();
        assert_eq!(owner.next(), Some(token));
        assert_eq!(owner.next(), Some(token));
        assert_eq!(owner.next(), None);
        assert_eq!(queues.dequeue(token).unwrap(), b"a");
        assert_eq!(
            queues.enqueue(99, b"x".to_vec(), 1000),
            Err(Status::NotFound)
        );
    }

    #[test]
    fn items_waiting_are_bounded_and_so_are_queues() {
        let mut queues = Queues::default();
        let owner = Arc::new(QueueReady::default());
        let token = queues.register("", "q", &owner).unwrap();
        let limit = 2 * ITEM_OVERHEAD + 10;
        queues.enqueue(token, vec![0; 8], limit).unwrap();
        assert_eq!(
            queues.enqueue(token, vec![0; 3], limit),
            Err(Status::InternalFailure)
        );
        // Empty items count too.
        queues.enqueue(token, Vec::new(), limit).unwrap();
        assert_eq!(
            queues.enqueue(token, Vec::new(), limit),
            Err(Status::InternalFailure)
        );
        queues.dequeue(token).unwrap();
        queues.enqueue(token, vec![0; 3], limit).unwrap();
        // Announcements are bounded whatever is dequeued.
        for _ in 0..2 * MAX_PENDING_NOTIFICATIONS {
            queues.enqueue(token, Vec::new(), usize::MAX).unwrap();
            queues.dequeue(token).unwrap();
        }
        assert_eq!(
            owner.tokens.lock().unwrap().len(),
            MAX_PENDING_NOTIFICATIONS
        );
        for i in 1..MAX_QUEUES {
            queues.register("", &format!("q{i}"), &owner).unwrap();
        }
        assert_eq!(
            queues.register("", "one too many", &owner),
            Err(Status::InternalFailure)
        );
    }
}
