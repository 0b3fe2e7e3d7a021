//! `ptl graph`: the DAG with each stage's status, as Graphviz dot or Mermaid.

use super::{Plan, Status};
use crate::lang::pipeline::Pipeline;

fn color(s: Status) -> &'static str {
    match s {
        Status::Cached => "palegreen",
        Status::Run => "khaki",
        Status::Blocked => "lightgray",
    }
}

pub fn dot(p: &Pipeline, plan: &Plan) -> String {
    let mut s = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [shape=box, style=filled];\n",
        p.name
    );
    for &id in &plan.order {
        let st = plan.stages[id].status;
        s.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{} · {}\", fillcolor={}];\n",
            p.stages[id].name,
            p.stages[id].name,
            p.stages[id].kind.name,
            st.name(),
            color(st)
        ));
    }
    for &id in &plan.order {
        for d in &p.stages[id].deps {
            s.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                p.stages[*d].name, p.stages[id].name
            ));
        }
    }
    s.push_str("}\n");
    s
}

pub fn mermaid(p: &Pipeline, plan: &Plan) -> String {
    let node = |id: usize| format!("s{id}");
    let mut s = String::from("flowchart LR\n");
    for &id in &plan.order {
        s.push_str(&format!(
            "  {}[\"{}<br/>{} · {}\"]:::{}\n",
            node(id),
            p.stages[id].name,
            p.stages[id].kind.name,
            plan.stages[id].status.name(),
            plan.stages[id].status.name()
        ));
    }
    for &id in &plan.order {
        for d in &p.stages[id].deps {
            s.push_str(&format!("  {} --> {}\n", node(*d), node(id)));
        }
    }
    for st in [Status::Cached, Status::Run, Status::Blocked] {
        s.push_str(&format!("  classDef {} fill:{}\n", st.name(), color(st)));
    }
    s
}
