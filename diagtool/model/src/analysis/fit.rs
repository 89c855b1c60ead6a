//! Line fits over `(x, y)` points: least squares with R², and Theil-Sen.
//!
//! Both take x in minutes so slopes come out in tasks per minute. Theil-Sen (the median of all
//! pairwise slopes) ignores a burst that comes and goes, where least squares follows it; its cost is
//! quadratic, so long series are thinned to [`THEIL_SEN_MAX_POINTS`] evenly spaced points first.

/// A least-squares line `y = intercept + slope * x`, with its coefficient of determination.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LineFit {
    /// Growth per unit of x.
    pub slope: f64,
    /// y at x = 0.
    pub intercept: f64,
    /// Share of the variance of y the line explains, 0..=1; 0 when y is flat or x has no spread.
    pub r2: f64,
}

/// Longest series Theil-Sen looks at in full; longer ones are thinned evenly.
pub const THEIL_SEN_MAX_POINTS: usize = 300;

/// Fits a least-squares line. Returns a flat line at the mean for fewer than two distinct x.
///
/// # Examples
/// ```
/// use diagtool_model::analysis::least_squares;
/// let fit = least_squares(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]);
/// assert!((fit.slope - 2.0).abs() < 1e-9 && (fit.r2 - 1.0).abs() < 1e-9);
/// ```
pub fn least_squares(x: &[f64], y: &[f64]) -> LineFit {
    let n = x.len().min(y.len());
    if n == 0 {
        return LineFit {
            slope: 0.0,
            intercept: 0.0,
            r2: 0.0,
        };
    }
    let nf = n as f64;
    let mean_x = x[..n].iter().sum::<f64>() / nf;
    let mean_y = y[..n].iter().sum::<f64>() / nf;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let dx = x[i] - mean_x;
        let dy = y[i] - mean_y;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    if sxx <= f64::EPSILON {
        return LineFit {
            slope: 0.0,
            intercept: mean_y,
            r2: 0.0,
        };
    }
    let slope = sxy / sxx;
    let r2 = if syy <= f64::EPSILON {
        0.0
    } else {
        ((sxy * sxy) / (sxx * syy)).clamp(0.0, 1.0)
    };
    LineFit {
        slope,
        intercept: mean_y - slope * mean_x,
        r2,
    }
}

/// The Theil-Sen slope: the median of the slopes between every pair of points with distinct x.
///
/// # Examples
/// ```
/// use diagtool_model::analysis::theil_sen;
/// // A burst at the end does not bend the slope of a flat series.
/// assert_eq!(theil_sen(&[0.0, 1.0, 2.0, 3.0, 4.0], &[5.0, 5.0, 5.0, 5.0, 90.0]), 0.0);
/// ```
pub fn theil_sen(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().min(y.len());
    let idx: Vec<usize> = if n > THEIL_SEN_MAX_POINTS {
        (0..THEIL_SEN_MAX_POINTS)
            .map(|i| i * (n - 1) / (THEIL_SEN_MAX_POINTS - 1))
            .collect()
    } else {
        (0..n).collect()
    };
    let mut slopes = Vec::with_capacity(idx.len() * idx.len().saturating_sub(1) / 2);
    for (a, &i) in idx.iter().enumerate() {
        for &j in &idx[a + 1..] {
            let dx = x[j] - x[i];
            if dx.abs() > f64::EPSILON {
                slopes.push((y[j] - y[i]) / dx);
            }
        }
    }
    median(&mut slopes).unwrap_or(0.0)
}

/// The median (mean of the two middle values for an even count); `None` when empty.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mid = values.len() / 2;
    let (_, upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *upper;
    if values.len() % 2 == 1 {
        return Some(upper);
    }
    let lower = values[..mid]
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    Some((lower + upper) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_noisy_line() {
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|x| 3.0 * x + 1.0 + if *x as i64 % 2 == 0 { 0.5 } else { -0.5 })
            .collect();
        let fit = least_squares(&x, &y);
        assert!((fit.slope - 3.0).abs() < 0.05, "{fit:?}");
        assert!(fit.r2 > 0.99 && fit.r2 <= 1.0, "{fit:?}");
    }

    #[test]
    fn flat_and_degenerate_inputs_give_zero_slope_and_r2() {
        assert_eq!(least_squares(&[0.0, 1.0, 2.0], &[4.0, 4.0, 4.0]).r2, 0.0);
        assert_eq!(least_squares(&[1.0, 1.0], &[0.0, 9.0]).slope, 0.0);
        assert_eq!(least_squares(&[], &[]).slope, 0.0);
        assert_eq!(theil_sen(&[1.0], &[3.0]), 0.0);
    }

    #[test]
    fn theil_sen_ignores_outliers_least_squares_follows() {
        let x: Vec<f64> = (0..10).map(f64::from).collect();
        let mut y: Vec<f64> = x.iter().map(|x| 2.0 * x).collect();
        y[9] = 500.0;
        assert!((theil_sen(&x, &y) - 2.0).abs() < 1e-9);
        assert!(least_squares(&x, &y).slope > 10.0);
    }

    #[test]
    fn theil_sen_thins_long_series_and_keeps_the_slope() {
        let x: Vec<f64> = (0..5000).map(|i| f64::from(i) / 60.0).collect();
        let y: Vec<f64> = x.iter().map(|x| 7.0 * x).collect();
        assert!((theil_sen(&x, &y) - 7.0).abs() < 1e-6);
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
