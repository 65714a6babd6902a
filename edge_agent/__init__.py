"""Edge agent: the contract (intersection model, timing plans, the safety guard, wire messages)
and the runtime that runs on an intersection box."""
