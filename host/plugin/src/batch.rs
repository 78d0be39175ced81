//! Several commands of one log entry on one fresh instance.
//!
//! Instantiation costs several times more than a small command (see
//! docs/plugins.md), so when one log entry carries several client commands they may
//! share an instance. This keeps replicas identical because the unit is fixed by the
//! log: every node, including one that restarts, applies exactly the same commands on
//! the same fresh instance in the same order, so any state the guest keeps in memory
//! evolves identically. Grouping by anything node-local (what happened to commit
//! together, a timer) would break that; the API cannot check it, the caller must.

use crate::kv::Writes;
use crate::runtime::{ApplyContext, ApplyOutcome, Plugin};
use crate::store::Mode;
use crate::{KvView, PluginError};
use std::sync::Arc;

impl Plugin {
    /// Applies the commands of ONE log entry, in order, on one fresh instance: the
    /// same as calling [`Plugin::apply`] for each (each has its own fuel budget, its
    /// own result, and sees the writes of the earlier successful ones), but paying for
    /// one instantiation instead of one per command.
    ///
    /// A command that traps, runs out of fuel or hits the memory limit fails alone;
    /// the next command gets a new fresh instance. WASI clocks and random streams are
    /// those of the command that created the instance; `ctx` is each command's own.
    /// Apply each outcome's writes in order. `Err` is node-local: fail-stop.
    ///
    /// The batch must be a unit every node applies identically: the commands of one
    /// log entry, never a node-local grouping.
    pub fn apply_batch(
        &self,
        view: Arc<dyn KvView>,
        commands: &[(ApplyContext, &[u8])],
    ) -> Result<Vec<ApplyOutcome>, PluginError> {
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut live = None;
        let mut earlier = Some(crate::kv::WriteBuffer::default());
        let mut earlier_retains = std::collections::BTreeMap::new();
        for (ctx, command) in commands {
            let (mut store, sm) = match live.take() {
                Some(pair) => pair,
                None => {
                    let mut state =
                        self.state(view.clone(), Mode::Apply, ctx.timestamp_ms, ctx.seed());
                    state.earlier = earlier.take().unwrap_or_default();
                    state.earlier_retains = std::mem::take(&mut earlier_retains);
                    match self.fresh_instance(state) {
                        Ok((store, _, sm)) => (store, sm),
                        Err(e) if e.is_deterministic() => {
                            // The batch's writes went with the state, but no later
                            // command reads them: instantiation fails the same way
                            // for each (a start-up trap or the memory limit).
                            outcomes.push(failed(e, self.limits().fuel));
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            store.data_mut().next_command(&ctx.attachments);
            self.arm(&mut store)?;
            let called = sm.call_apply(&mut store, &ctx.to_wit(), command);
            let fuel_used = self.fuel_used(&store);
            match called {
                Ok(answer) => {
                    let result = self.answer(answer);
                    let state = store.data_mut();
                    let own = std::mem::take(&mut state.writes);
                    let retains = state.take_retains();
                    let (writes, retains) = if result.is_ok() {
                        let writes = own.into_writes();
                        state.earlier.absorb(&writes);
                        for (sha, d) in &retains {
                            *state.earlier_retains.entry(*sha).or_default() += d;
                        }
                        (writes, retains)
                    } else {
                        (Writes::new(), Vec::new())
                    };
                    outcomes.push(ApplyOutcome {
                        result,
                        writes,
                        retains,
                        fuel_used,
                    });
                    live = Some((store, sm));
                }
                Err(e) => {
                    // A trapped instance cannot be entered again: drop it, keep the
                    // batch's writes for the next fresh one.
                    let mut state = store.into_data();
                    let err = self.call_failed(&e, &mut state);
                    if !err.is_deterministic() {
                        return Err(err);
                    }
                    earlier = Some(std::mem::take(&mut state.earlier));
                    earlier_retains = std::mem::take(&mut state.earlier_retains);
                    outcomes.push(failed(err, self.limits().fuel));
                }
            }
        }
        Ok(outcomes)
    }
}

fn failed(err: PluginError, budget: u64) -> ApplyOutcome {
    ApplyOutcome {
        result: Err(err),
        writes: Writes::new(),
        retains: Vec::new(),
        fuel_used: budget,
    }
}
