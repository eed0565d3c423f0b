//! Text to graph. Parsing runs in two steps: statements are read line by line, then
//! names are resolved (values may be used before the line that defines them; a cycle is
//! an error), and parameters that an op leaves implicit are created as `<node>.<slot>`.

use super::lexer::{Tok, Token, lex_line};
use super::{MAX_LINE_CHARS, ParseError, ParseErrorKind};
use crate::DType;
use crate::ir::{
    BatchNormAttrs, Conv2dAttrs, Conv2dGradInputAttrs, Conv2dGradWeightAttrs, DenseAttrs, Dim,
    Graph, Node, NodeId, NodeKind, Op, OpKind, PoolAttrs, Span, TensorType, VarConvention,
};
use crate::suggest::suggest;

type R<T> = Result<T, ParseError>;

fn err<T>(span: Span, kind: ParseErrorKind) -> R<T> {
    Err(ParseError { span, kind })
}

/// An attribute value as written.
#[derive(Clone, Debug)]
enum Value {
    Int(u64),
    Neg(String),
    Float(f64),
    Ident(String),
    List(Vec<u64>),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::Int(n) => format!("`{n}`"),
            Value::Neg(s) => format!("`-{s}`"),
            Value::Float(x) => format!("`{x:?}`"),
            Value::Ident(s) => format!("`{s}`"),
            Value::List(v) => {
                let items: Vec<String> = v.iter().map(u64::to_string).collect();
                format!("`[{}]`", items.join(","))
            }
        }
    }
}

struct Attr {
    name: String,
    span: Span,
    value: Value,
    value_span: Span,
}

struct OpStmt {
    name: String,
    kind: OpKind,
    kind_span: Span,
    operands: Vec<(String, Span)>,
    attrs: Vec<Attr>,
    ty: Option<TensorType>,
}

enum Stmt {
    Input {
        name: String,
        span: Span,
        ty: TensorType,
    },
    Param {
        name: String,
        span: Span,
        ty: Option<TensorType>,
    },
    Op(OpStmt),
    Output {
        names: Vec<(String, Span)>,
        span: Span,
    },
}

/// A cursor over the tokens of one line.
struct Line {
    toks: Vec<Token>,
    pos: usize,
    end: Span,
}

impl Line {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn span(&self) -> Span {
        self.toks.get(self.pos).map_or(self.end, |t| t.span)
    }

    fn found(&self) -> String {
        self.toks
            .get(self.pos)
            .map_or_else(|| "end of line".to_string(), |t| t.tok.describe())
    }

    fn expected<T>(&self, expected: &'static str) -> R<T> {
        err(
            self.span(),
            ParseErrorKind::Expected {
                expected,
                found: self.found(),
            },
        )
    }

    fn punct(&mut self, c: char, expected: &'static str) -> R<Span> {
        if self.peek() == Some(&Tok::Punct(c)) {
            let span = self.span();
            self.pos += 1;
            Ok(span)
        } else {
            self.expected(expected)
        }
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Tok::Punct(c));
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn ident(&mut self, expected: &'static str) -> R<(String, Span)> {
        match self.peek() {
            Some(Tok::Ident(s)) => {
                let out = (s.clone(), self.span());
                self.pos += 1;
                Ok(out)
            }
            _ => self.expected(expected),
        }
    }

    fn int(&mut self, expected: &'static str) -> R<u64> {
        match self.peek() {
            Some(&Tok::Int(n)) => {
                self.pos += 1;
                Ok(n)
            }
            _ => self.expected(expected),
        }
    }

    fn finish(&self) -> R<()> {
        if self.pos == self.toks.len() {
            Ok(())
        } else {
            self.expected("end of line")
        }
    }

    fn ty(&mut self) -> R<TensorType> {
        let (name, span) = self.ident("an element type such as `f32`")?;
        let dtype = DType::from_name(&name).ok_or(ParseError {
            span,
            kind: ParseErrorKind::UnknownDType { name },
        })?;
        self.punct('[', "`[`")?;
        let mut dims = Vec::new();
        if !self.eat(']') {
            loop {
                match self.peek() {
                    Some(&Tok::Int(n)) => {
                        let n = usize::try_from(n).map_err(|_| ParseError {
                            span: self.span(),
                            kind: ParseErrorKind::BadNumber {
                                text: n.to_string(),
                            },
                        })?;
                        dims.push(Dim::Fixed(n));
                        self.pos += 1;
                    }
                    Some(Tok::Ident(s)) if s == "N" => {
                        dims.push(Dim::Sym(s.clone()));
                        self.pos += 1;
                    }
                    Some(Tok::Ident(s)) => {
                        return err(
                            self.span(),
                            ParseErrorKind::UnknownSymbol { name: s.clone() },
                        );
                    }
                    _ => return self.expected("a dimension (an integer or `N`)"),
                }
                if self.eat(']') {
                    break;
                }
                self.punct(',', "`,` or `]`")?;
            }
        }
        Ok(TensorType { dtype, dims })
    }

    fn value(&mut self) -> R<Value> {
        let v = match self.peek().cloned() {
            Some(Tok::Int(n)) => Value::Int(n),
            Some(Tok::Float(x)) => Value::Float(x),
            Some(Tok::Ident(s)) => Value::Ident(s),
            Some(Tok::Punct('-')) => {
                self.pos += 1;
                match self.peek().cloned() {
                    Some(Tok::Int(n)) => Value::Neg(n.to_string()),
                    Some(Tok::Float(x)) => Value::Float(-x),
                    _ => return self.expected("a number after `-`"),
                }
            }
            Some(Tok::Punct('[')) => {
                self.pos += 1;
                let mut items = vec![self.int("an integer")?];
                while self.eat(',') {
                    items.push(self.int("an integer")?);
                }
                self.punct(']', "`,` or `]`")?;
                return Ok(Value::List(items));
            }
            _ => return self.expected("an attribute value"),
        };
        self.pos += 1;
        Ok(v)
    }
}

fn statement(line: &mut Line) -> R<Stmt> {
    let (first, span) =
        line.ident("a statement (`input`, `param`, `output` or `name = op(...)`)")?;
    match first.as_str() {
        "input" if !matches!(line.peek(), Some(Tok::Punct('='))) => {
            let (name, span) = line.ident("an input name")?;
            line.punct(':', "`:`")?;
            let ty = line.ty()?;
            line.finish()?;
            Ok(Stmt::Input { name, span, ty })
        }
        "param" if !matches!(line.peek(), Some(Tok::Punct('='))) => {
            let (name, span) = line.ident("a parameter name")?;
            let ty = if line.eat(':') {
                Some(line.ty()?)
            } else {
                None
            };
            line.finish()?;
            Ok(Stmt::Param { name, span, ty })
        }
        "output" if !matches!(line.peek(), Some(Tok::Punct('='))) => {
            let mut names = vec![line.ident("an output name")?];
            while line.eat(',') {
                names.push(line.ident("an output name")?);
            }
            line.finish()?;
            Ok(Stmt::Output { names, span })
        }
        _ => {
            line.punct('=', "`=`")?;
            let (op_name, kind_span) = line.ident("an op name")?;
            let kind = OpKind::from_name(&op_name).ok_or_else(|| ParseError {
                span: kind_span,
                kind: ParseErrorKind::UnknownOp {
                    suggestion: suggest(&op_name, crate::ir::OPS.iter().map(|i| i.name)),
                    name: op_name,
                },
            })?;
            line.punct('(', "`(`")?;
            let mut operands = Vec::new();
            let mut attrs = Vec::new();
            if !line.eat(')') {
                loop {
                    let (word, wspan) = line.ident("an operand or attribute")?;
                    if line.eat('=') {
                        let value_span = line.span();
                        let value = line.value()?;
                        attrs.push(Attr {
                            name: word,
                            span: wspan,
                            value,
                            value_span,
                        });
                    } else {
                        operands.push((word, wspan));
                    }
                    if line.eat(')') {
                        break;
                    }
                    line.punct(',', "`,` or `)`")?;
                }
            }
            let ty = if line.eat(':') {
                Some(line.ty()?)
            } else {
                None
            };
            line.finish()?;
            Ok(Stmt::Op(OpStmt {
                name: first,
                kind,
                kind_span,
                operands,
                attrs,
                ty,
            }))
        }
    }
}

/// Reads attributes off an attribute list, checking names, duplicates and values.
struct Attrs<'a> {
    op: &'static str,
    attrs: &'a [Attr],
}

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    fn bad<T>(&self, a: &Attr, attr: &'static str, expected: &'static str) -> R<T> {
        err(
            a.value_span,
            ParseErrorKind::BadValue {
                op: self.op,
                attr,
                expected,
                found: a.value.describe(),
            },
        )
    }

    fn positive(&self, a: &Attr, attr: &'static str, zero_ok: bool) -> R<usize> {
        match a.value {
            Value::Int(n) if (zero_ok || n > 0) && n <= u32::MAX as u64 => Ok(n as usize),
            _ if zero_ok => self.bad(a, attr, "a non-negative integer"),
            _ => self.bad(a, attr, "a positive integer"),
        }
    }

    fn usize(
        &self,
        attr: &'static str,
        default: Option<usize>,
        zero_ok: bool,
        kind_span: Span,
    ) -> R<usize> {
        match (self.get(attr), default) {
            (Some(a), _) => self.positive(a, attr, zero_ok),
            (None, Some(d)) => Ok(d),
            (None, None) => err(kind_span, ParseErrorKind::MissingAttr { op: self.op, attr }),
        }
    }

    fn pair(
        &self,
        attr: &'static str,
        default: Option<[usize; 2]>,
        zero_ok: bool,
        kind_span: Span,
    ) -> R<[usize; 2]> {
        let expected = if zero_ok {
            "a non-negative integer or [h,w]"
        } else {
            "a positive integer or [h,w]"
        };
        match (self.get(attr), default) {
            (Some(a), _) => match &a.value {
                Value::Int(_) => {
                    let n = self.positive(a, attr, zero_ok)?;
                    Ok([n, n])
                }
                Value::List(v)
                    if v.len() == 2
                        && v.iter()
                            .all(|&n| (zero_ok || n > 0) && n <= u32::MAX as u64) =>
                {
                    Ok([v[0] as usize, v[1] as usize])
                }
                _ => self.bad(a, attr, expected),
            },
            (None, Some(d)) => Ok(d),
            (None, None) => err(kind_span, ParseErrorKind::MissingAttr { op: self.op, attr }),
        }
    }

    fn bool(&self, attr: &'static str, default: bool) -> R<bool> {
        match self.get(attr) {
            None => Ok(default),
            Some(a) => match &a.value {
                Value::Ident(s) if s == "true" => Ok(true),
                Value::Ident(s) if s == "false" => Ok(false),
                _ => self.bad(a, attr, "`true` or `false`"),
            },
        }
    }

    fn float(
        &self,
        attr: &'static str,
        default: f64,
        ok: impl Fn(f64) -> bool,
        expected: &'static str,
    ) -> R<f64> {
        match self.get(attr) {
            None => Ok(default),
            Some(a) => {
                let x = match a.value {
                    Value::Float(x) => x,
                    Value::Int(n) => n as f64,
                    _ => return self.bad(a, attr, expected),
                };
                if ok(x) {
                    Ok(x)
                } else {
                    self.bad(a, attr, expected)
                }
            }
        }
    }
}

fn build_op(s: &OpStmt) -> R<Op> {
    let info = s.kind.info();
    let mut seen: Vec<&str> = Vec::new();
    for a in &s.attrs {
        if !info.attrs.contains(&a.name.as_str()) {
            return err(
                a.span,
                ParseErrorKind::UnknownAttr {
                    op: info.name,
                    suggestion: suggest(&a.name, info.attrs.iter().copied()),
                    attr: a.name.clone(),
                },
            );
        }
        if seen.contains(&a.name.as_str()) {
            return err(
                a.span,
                ParseErrorKind::DuplicateAttr {
                    attr: a.name.clone(),
                },
            );
        }
        seen.push(&a.name);
    }
    let at = Attrs {
        op: info.name,
        attrs: &s.attrs,
    };
    let ks = s.kind_span;
    let bn = || -> R<BatchNormAttrs> {
        let running_var = match at.get("running_var") {
            None => VarConvention::Biased,
            Some(a) => match &a.value {
                Value::Ident(v) if v == "biased" => VarConvention::Biased,
                Value::Ident(v) if v == "unbiased" => VarConvention::Unbiased,
                _ => return at.bad(a, "running_var", "`biased` or `unbiased`"),
            },
        };
        Ok(BatchNormAttrs {
            eps: at.float(
                "eps",
                1e-5,
                |x| x > 0.0 && x.is_finite(),
                "a positive number",
            )?,
            momentum: at.float(
                "momentum",
                0.9,
                |x| (0.0..=1.0).contains(&x),
                "a number in [0, 1]",
            )?,
            running_var,
            input_bias: at.bool("input_bias", false)?,
        })
    };
    let pool = || -> R<PoolAttrs> {
        let kernel = at.pair("kernel", None, false, ks)?;
        Ok(PoolAttrs {
            kernel,
            stride: at.pair("stride", Some(kernel), false, ks)?,
            padding: at.pair("padding", Some([0, 0]), true, ks)?,
            count_include_pad: at.bool("count_include_pad", true)?,
        })
    };
    Ok(match s.kind {
        OpKind::Conv2d => Op::Conv2d(Conv2dAttrs {
            channels: at.usize("channels", None, false, ks)?,
            kernel: at.pair("kernel", None, false, ks)?,
            stride: at.pair("stride", Some([1, 1]), false, ks)?,
            padding: at.pair("padding", Some([0, 0]), true, ks)?,
            groups: at.usize("groups", Some(1), false, ks)?,
            bias: at.bool("bias", true)?,
        }),
        OpKind::Dense => Op::Dense(DenseAttrs {
            units: at.usize("units", None, false, ks)?,
            bias: at.bool("bias", true)?,
        }),
        OpKind::BatchNorm => Op::BatchNorm(bn()?),
        OpKind::BatchNormTrain => Op::BatchNormTrain(bn()?),
        OpKind::BatchNormInfer => Op::BatchNormInfer(bn()?),
        OpKind::Sigmoid => Op::Sigmoid,
        OpKind::Relu => Op::Relu,
        OpKind::Tanh => Op::Tanh,
        OpKind::AvgPool2d => Op::AvgPool2d(pool()?),
        OpKind::MaxPool2d => Op::MaxPool2d(pool()?),
        OpKind::Flatten => Op::Flatten,
        OpKind::Add => Op::Add,
        OpKind::Softmax => Op::Softmax,
        OpKind::SoftmaxCrossEntropy => Op::SoftmaxCrossEntropy,
        OpKind::ScaleShift => Op::ScaleShift,
        OpKind::BnScale => Op::BnScale { eps: bn()?.eps },
        OpKind::BnShift => Op::BnShift { eps: bn()?.eps },
        OpKind::ChannelScale => Op::ChannelScale,
        OpKind::ChannelAffine => Op::ChannelAffine,
        OpKind::SoftmaxCrossEntropyGrad => Op::SoftmaxCrossEntropyGrad,
        OpKind::SoftmaxGrad => Op::SoftmaxGrad,
        OpKind::DenseGradInput => Op::DenseGradInput,
        OpKind::DenseGradWeight => Op::DenseGradWeight,
        OpKind::BiasGrad => Op::BiasGrad,
        OpKind::Conv2dGradInput => Op::Conv2dGradInput(Conv2dGradInputAttrs {
            input_size: at.pair("input_size", None, false, ks)?,
            stride: at.pair("stride", Some([1, 1]), false, ks)?,
            padding: at.pair("padding", Some([0, 0]), true, ks)?,
            groups: at.usize("groups", Some(1), false, ks)?,
        }),
        OpKind::Conv2dGradWeight => Op::Conv2dGradWeight(Conv2dGradWeightAttrs {
            kernel: at.pair("kernel", None, false, ks)?,
            stride: at.pair("stride", Some([1, 1]), false, ks)?,
            padding: at.pair("padding", Some([0, 0]), true, ks)?,
            groups: at.usize("groups", Some(1), false, ks)?,
        }),
        OpKind::BatchNormTrainGrad => Op::BatchNormTrainGrad { eps: bn()?.eps },
        OpKind::BatchNormWeightGrad => Op::BatchNormWeightGrad { eps: bn()?.eps },
        OpKind::SigmoidGrad => Op::SigmoidGrad,
        OpKind::ReluGrad => Op::ReluGrad,
        OpKind::TanhGrad => Op::TanhGrad,
        OpKind::AvgPool2dGrad => Op::AvgPool2dGrad(pool()?),
        OpKind::MaxPool2dGrad => Op::MaxPool2dGrad(pool()?),
        OpKind::Unflatten => Op::Unflatten,
        OpKind::BatchStats => Op::BatchStats(bn()?),
        OpKind::BatchNormApply => Op::BatchNormApply { eps: bn()?.eps },
        OpKind::BatchNormGradSums => Op::BatchNormGradSums { eps: bn()?.eps },
        OpKind::BatchNormGradApply => Op::BatchNormGradApply { eps: bn()?.eps },
        OpKind::SelectRow => Op::SelectRow {
            index: at.usize("index", None, true, ks)?,
        },
    })
}

fn line_col_of_byte(src: &[u8], at: usize) -> Span {
    let before = &src[..at];
    let line = before.iter().filter(|&&b| b == b'\n').count() as u32 + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = String::from_utf8_lossy(&src[start..at]).chars().count() as u32 + 1;
    Span::new(line, col)
}

/// Parses IR text from bytes; invalid UTF-8 is an error at its position.
pub fn parse_bytes(src: &[u8]) -> R<Graph> {
    match std::str::from_utf8(src) {
        Ok(s) => parse(s),
        Err(e) => err(
            line_col_of_byte(src, e.valid_up_to()),
            ParseErrorKind::InvalidUtf8,
        ),
    }
}

/// Parses IR text into a graph (before shape inference: types are those written).
pub fn parse(src: &str) -> R<Graph> {
    let mut stmts = Vec::new();
    for (i, text) in src.lines().enumerate() {
        let line_no = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let len = text.chars().count();
        if len > MAX_LINE_CHARS {
            return err(Span::new(line_no, 1), ParseErrorKind::LineTooLong { len });
        }
        let toks = lex_line(text, line_no).map_err(|(span, kind)| ParseError { span, kind })?;
        if toks.is_empty() {
            continue;
        }
        let mut line = Line {
            toks,
            pos: 0,
            end: Span::new(line_no, len as u32 + 1),
        };
        stmts.push(statement(&mut line)?);
    }
    build(stmts, src)
}

fn build(stmts: Vec<Stmt>, src: &str) -> R<Graph> {
    if stmts.is_empty() {
        let line = src.lines().count().max(1) as u32;
        return err(Span::new(line, 1), ParseErrorKind::Empty);
    }
    let mut g = Graph::new();
    let add = |g: &mut Graph, node: Node| -> R<NodeId> {
        let span = node.span;
        let name = node.name.clone();
        match g.add_node(node) {
            Ok(id) => Ok(id),
            Err(d) => err(
                span,
                ParseErrorKind::DuplicateName {
                    name,
                    first: g.node(d.existing).span,
                },
            ),
        }
    };
    // Step 1: one node per statement, so that names can be used before their line.
    let mut ops = Vec::new();
    let mut output: Option<(Vec<(String, Span)>, Span)> = None;
    for stmt in stmts {
        match stmt {
            Stmt::Input { name, span, ty } => {
                add(
                    &mut g,
                    Node {
                        name,
                        kind: NodeKind::Input,
                        ty: Some(ty),
                        span,
                    },
                )?;
            }
            Stmt::Param { name, span, ty } => {
                add(
                    &mut g,
                    Node {
                        name,
                        kind: NodeKind::Param,
                        ty,
                        span,
                    },
                )?;
            }
            Stmt::Op(s) => {
                let op = build_op(&s)?;
                let n = s.operands.len();
                if n != op.data_arity() && n != op.arity() {
                    return err(
                        s.kind_span,
                        ParseErrorKind::Arity {
                            op: op.name(),
                            data: op.data_arity(),
                            all: op.arity(),
                            got: n,
                        },
                    );
                }
                let id = add(
                    &mut g,
                    Node {
                        name: s.name.clone(),
                        kind: NodeKind::Op(op),
                        ty: s.ty.clone(),
                        span: s.kind_span,
                    },
                )?;
                ops.push((id, s));
            }
            Stmt::Output { names, span } => {
                if output.is_some() {
                    return err(span, ParseErrorKind::SecondOutput);
                }
                output = Some((names, span));
            }
        }
    }
    let resolve = |g: &Graph, name: &str, span: Span| -> R<NodeId> {
        g.lookup(name).ok_or_else(|| ParseError {
            span,
            kind: ParseErrorKind::Undefined {
                name: name.to_string(),
            },
        })
    };
    // Step 2: create the parameters that ops leave implicit, so that they too can be used
    // before the line of their op.
    let mut implicit: Vec<Vec<NodeId>> = Vec::with_capacity(ops.len());
    for (id, s) in &ops {
        let mut params = Vec::new();
        if let Some(op) = g.node(*id).op().cloned()
            && s.operands.len() == op.data_arity()
        {
            for slot in op.param_slots() {
                let name = format!("{}.{slot}", s.name);
                let pid = match g.lookup(&name) {
                    Some(p) if matches!(g.node(p).kind, NodeKind::Param) => p,
                    Some(p) => {
                        let first = g.node(p).span;
                        return err(s.kind_span, ParseErrorKind::DuplicateName { name, first });
                    }
                    None => add(
                        &mut g,
                        Node {
                            name,
                            kind: NodeKind::Param,
                            ty: None,
                            span: s.kind_span,
                        },
                    )?,
                };
                params.push(pid);
            }
        }
        implicit.push(params);
    }
    // Step 3: resolve operands by name.
    for ((id, s), params) in ops.iter().zip(implicit) {
        let mut operands = Vec::new();
        for (name, span) in &s.operands {
            operands.push(resolve(&g, name, *span)?);
        }
        operands.extend(params);
        for (slot, o) in operands.into_iter().enumerate() {
            g.connect(o, *id, slot as u32);
        }
    }
    let Some((names, _)) = output else {
        let line = src.lines().count().max(1) as u32;
        return err(Span::new(line + 1, 1), ParseErrorKind::NoOutput);
    };
    let mut outputs = Vec::new();
    for (name, span) in names {
        outputs.push(resolve(&g, &name, span)?);
    }
    g.set_outputs(outputs);
    if g.inputs().is_empty() {
        return err(Span::new(1, 1), ParseErrorKind::NoInput);
    }
    if let Err(on_cycle) = g.topo_order() {
        let first = on_cycle
            .iter()
            .map(|&id| g.node(id).span)
            .min_by_key(|s| (s.line, s.col))
            .unwrap_or_default();
        let names = on_cycle
            .iter()
            .filter(|&&id| g.node(id).op().is_some())
            .map(|&id| g.node(id).name.clone())
            .collect();
        return err(first, ParseErrorKind::Cycle { names });
    }
    Ok(g)
}
